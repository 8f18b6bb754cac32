"""The math data sets megarl ships (training prompts and evaluation benchmarks), by name.

Files are JSON Lines `{"id", "problem", "answer", ["level"], ["subject"]}`; README.md in this
folder gives each one's source, license and row count, and MD5SUMS pins their contents.
`dataset_path("math500")` returns the path of a set; `verify_checksums()` checks them all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DATASETS_DIR = Path(__file__).resolve().parent

# Evaluation benchmarks (never train on these) and training sets.
EVAL_SETS = ("aime24", "amc23", "amc_drgrpo", "gsm8k_test", "math500", "minerva_math", "minerva_math_drgrpo", "olympiadbench")
TRAIN_SETS = ("gsm8k_train", "math_lvl1_train", "math_lvl1to4_train", "math_lvl3to5_train")
# Short names used by `megarl eval --benchmarks` and recipes.
ALIASES = {"gsm8k": "gsm8k_test", "math": "math500", "minerva": "minerva_math", "olympiad": "olympiadbench"}


def list_datasets() -> list[str]:
    """Names of all shipped sets."""
    return sorted(path.stem for path in DATASETS_DIR.glob("*.jsonl"))


def dataset_path(name: str) -> Path:
    """Path of a shipped set by name (`math500`, `gsm8k_train`, ...; a `.jsonl` suffix is fine)."""
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    stem = ALIASES.get(stem, stem)
    path = DATASETS_DIR / f"{stem}.jsonl"
    if not path.is_file():
        known = ", ".join(list_datasets())
        raise FileNotFoundError(f"no shipped data set named {name!r}; known sets: {known}")
    return path


def verify_checksums() -> dict[str, bool]:
    """MD5 of every shipped file against MD5SUMS: {file name: matches}."""
    results = {}
    for line in (DATASETS_DIR / "MD5SUMS").read_text().splitlines():
        if not line.strip():
            continue
        expected, file_name = line.split()
        digest = hashlib.md5((DATASETS_DIR / file_name).read_bytes()).hexdigest()
        results[file_name] = digest == expected
    return results
