"""The names a recipe gives for prompt data (`data.train`, `data.eval_sets`, `eval.benchmarks`),
checked when the recipe loads, before anything starts, with a did-you-mean for a misspelt name.

A source is one of (megarl.data.load_prompts reads them all):
    a shipped set or its short name     math500, gsm8k (megarl.datasets)
    a difficulty preset                 easy, medium, hard (training data only)
    a generated set                     NAME:SPLIT[:COUNT], made on use by a plugin that registered it
                                        (`register_generated_set`; the CPU demo's toy-arith:heldout:200)
    hf://owner/name                     the Hugging Face Hub (not checked: needs network)
    a file or folder                    data/train.jsonl, /data/math (must exist when files are checked)
A bare word that is none of the names and no file or folder here is refused: it is a typo far more
often than a folder named like a data set.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from megarl.data.difficulty import DIFFICULTY_PRESETS
from megarl.datasets import ALIASES, list_datasets

HUB_PREFIX = "hf://"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class GeneratedSet:
    """A prompt set a plugin makes on use, named `NAME:SPLIT[:COUNT]` (no file)."""

    name: str
    splits: dict[str, str]  # split -> what it is for (`megarl data list`)
    rows: Callable[[str, int], list[dict]]  # (split, count) -> rows {"id", "problem", "answer", ...}
    prompt: Callable[[str], str] = field(default=lambda problem: problem)  # a row's problem as the model is prompted
    default_rows: int = 1000


GENERATED_SETS: dict[str, GeneratedSet] = {}


def register_generated_set(generated: GeneratedSet) -> None:
    """Make `NAME:SPLIT[:COUNT]` a data source (a plugin calls this when it is imported)."""
    GENERATED_SETS[generated.name] = generated


def parse_generated(source: str) -> tuple[GeneratedSet, str, int] | None:
    """(set, split, rows) of a generated set's name like `toy-arith-long:heldout:200`; None when `source`
    names no registered set. Raises ValueError for a registered set with a bad split or count."""
    name, sep, rest = source.partition(":")
    generated = GENERATED_SETS.get(name) if sep else None
    if generated is None:
        return None
    parts = rest.split(":")
    split = parts[0]
    if split not in generated.splits or len(parts) > 2:
        raise ValueError(f"{source!r}: write {name}:SPLIT[:COUNT] with SPLIT one of {', '.join(generated.splits)}")
    try:
        count = int(parts[1]) if len(parts) > 1 else generated.default_rows
    except ValueError:
        raise ValueError(f"{source!r}: the count {parts[1]!r} is not a whole number") from None
    if count < 1:
        raise ValueError(f"{source!r}: the count must be >= 1")
    return generated, split, count


def source_names(*, presets: bool = True) -> list[str]:
    """Every name (not path) a source may be: shipped sets, their short names, presets, generated sets."""
    names = [*list_datasets(), *ALIASES]
    if presets:
        names += list(DIFFICULTY_PRESETS)
    return names + [f"{name}:{split}" for name, generated in GENERATED_SETS.items() for split in generated.splits]


def looks_like_path(item: str) -> bool:
    return "/" in item or item.startswith((".", "~")) or item.endswith(DATA_SUFFIXES)


def name_problem(item: str, *, presets: bool = True) -> str | None:
    """What is wrong with a source that is not a path (None: a known name, a path, or hf://)."""
    if item.startswith(HUB_PREFIX) or looks_like_path(item):
        return None
    try:
        if parse_generated(item) is not None:
            return None
    except ValueError as err:  # a generated set with a bad split or count
        return str(err)
    names = source_names(presets=presets)
    if item in names or Path(item).exists():
        return None
    if not presets and item in DIFFICULTY_PRESETS:
        return f"{item!r} is a training preset, not a benchmark; use a shipped evaluation set or a file"
    stem = item.rsplit(":", 1)[0] if item.rsplit(":", 1)[-1].isdigit() else item  # toy-arith:heldot:200
    close = difflib.get_close_matches(stem, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"{item!r} is not a known data set and no file or folder of that name exists; {hint}"
            "`megarl data list` shows the known sets (or give a path or hf://owner/name)")


def missing_path(item: str) -> bool:
    """A file or folder source that does not exist on this machine."""
    return looks_like_path(item) and not item.startswith(HUB_PREFIX) and not Path(item).expanduser().exists()


def one_value_for_a_list(value: str) -> str:
    """The message for a single source where a list is expected (`data.train=/x.jsonl`)."""
    note = f" (also, {value} does not exist)" if missing_path(value) else ""
    return f"a list is expected, not the single value {value!r}; write [{value}]{note}"
