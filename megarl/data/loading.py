"""Loading math prompts (problem + gold answer) from JSON Lines, Parquet, HF datasets, or shipped sets.

`load_records(source)` accepts:
- a shipped set name (`math500`, `gsm8k_train`, ...; see megarl.datasets),
- a `.jsonl` file (one object per line) or a `.json` file holding a list of objects,
- a `.parquet` file, or a folder of `.jsonl` / `.parquet` files (read in name order),
- a folder written by HF `datasets` `save_to_disk` (a Dataset or DatasetDict; `split` picks one),
- `hf://owner/name` for the Hugging Face Hub (needs network and the `datasets` package).
Field names are configurable (`problem_key`, `answer_key`, `id_key`); a missing field is an
error that names the fields the rows do have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from megarl.datasets import dataset_path, list_datasets


@dataclass
class PromptRecord:
    """One training or evaluation problem."""

    id: str
    problem: str
    answer: str | list[str]  # one gold answer, or several acceptable ones
    level: int | None = None  # MATH difficulty level 1-5 where known
    subject: str | None = None
    source: str = ""  # the set or file it came from
    extra: dict[str, Any] = field(default_factory=dict)  # any other fields of the row


def iter_json_objects(lines, name: str, error=ValueError):
    """(line number, object) for each non-blank JSON Lines row; `error` names the bad line."""
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{name}: line {line_number}: not valid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(row, dict):
            raise error(f"{name}: line {line_number}: expected a JSON object, got {type(row).__name__}")
        yield line_number, row


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [row for _, row in iter_json_objects(handle, str(path))]


def _read_json(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        for key in ("data", "rows", "train", "test"):
            if isinstance(data.get(key), list):
                return data[key]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects (or JSON Lines with a .jsonl suffix)")
    return data


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from error
    return parquet.read_table(path).to_pylist()


def _read_hf_saved(path: Path, split: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError as error:
        raise ImportError(f"{path} is a HF datasets folder; reading it needs: pip install datasets") from error
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in loaded else next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r}; it has {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded.to_list()


def _read_hf_hub(name: str, split: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError as error:
        raise ImportError(f"loading hf://{name} needs: pip install datasets") from error
    try:
        return datasets.load_dataset(name, split=split or "train").to_list()
    except Exception as error:  # noqa: BLE001  (network and hub errors come in many types)
        raise RuntimeError(
            f"could not load hf://{name} (split {split or 'train'}) from the Hugging Face Hub: {error}. "
            "Without network, save it elsewhere with datasets' save_to_disk or as Parquet/JSONL and pass that path."
        ) from error


def read_rows(source: str | Path, split: str | None = None) -> tuple[list[dict], str]:
    """Raw rows of a source and a short name for it."""
    text = str(source)
    if text.startswith("hf://"):
        return _read_hf_hub(text[len("hf://") :], split), text
    path = Path(text).expanduser()
    if not path.exists():
        if text.removesuffix(".jsonl") in list_datasets() or text in ("gsm8k", "math", "minerva", "olympiad"):
            shipped = dataset_path(text)
            return _read_jsonl(shipped), shipped.stem
        raise FileNotFoundError(
            f"no data at {text!r}: not a file or folder, and not a shipped set ({', '.join(list_datasets())}); "
            "use hf://owner/name for the Hub"
        )
    if path.is_dir():
        if any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return _read_hf_saved(path, split), path.name
        files = sorted([*path.glob("*.jsonl"), *path.glob("*.parquet")])
        if not files:
            raise ValueError(f"folder {path} has no .jsonl or .parquet files and is not a HF datasets save_to_disk folder")
        rows: list[dict] = []
        for file in files:
            rows.extend(_read_jsonl(file) if file.suffix == ".jsonl" else _read_parquet(file))
        return rows, path.name
    if path.suffix == ".jsonl":
        return _read_jsonl(path), path.stem
    if path.suffix == ".json":
        return _read_json(path), path.stem
    if path.suffix == ".parquet":
        return _read_parquet(path), path.stem
    raise ValueError(f"{path}: unknown data format {path.suffix!r}; use .jsonl, .json, .parquet or a folder")


def _as_level(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    digits = "".join(ch for ch in str(value) if ch.isdigit())  # "Level 3" in the original MATH files
    return int(digits) if digits else None


def rows_to_records(
    rows: Iterable[dict], source_name: str, problem_key: str = "problem", answer_key: str = "answer", id_key: str = "id"
) -> list[PromptRecord]:
    records = []
    for index, row in enumerate(rows):
        for key, option in ((problem_key, "problem_key"), (answer_key, "answer_key")):
            if key not in row:
                raise ValueError(
                    f"{source_name}: row {index} has no field {key!r} (fields: {', '.join(sorted(row))}); "
                    f"set {option} to the right field name"
                )
        answer = row[answer_key]
        answer = [str(a) for a in answer] if isinstance(answer, (list, tuple)) else str(answer)
        known = {problem_key, answer_key, id_key, "level", "subject"}
        records.append(
            PromptRecord(
                id=str(row.get(id_key, f"{source_name}-{index}")),
                problem=str(row[problem_key]),
                answer=answer,
                level=_as_level(row.get("level")),
                subject=row.get("subject"),
                source=source_name,
                extra={k: v for k, v in row.items() if k not in known},
            )
        )
    return records


def load_records(
    source: str | Path,
    problem_key: str = "problem",
    answer_key: str = "answer",
    id_key: str = "id",
    split: str | None = None,
    limit: int | None = None,
) -> list[PromptRecord]:
    """Prompt records from any supported source (see the module docstring)."""
    rows, name = read_rows(source, split)
    if limit is not None:
        rows = rows[:limit]
    return rows_to_records(rows, name, problem_key, answer_key, id_key)
