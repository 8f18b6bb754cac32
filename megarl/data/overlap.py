"""Train/eval separation: refuse to train on prompts that appear in an evaluation set.

Problems are compared by normalized text (case, whitespace, `$`, LaTeX spacing and `\\left`/
`\\right`, `dfrac` vs `frac` ignored), so a copy with different spacing or math delimiters is
still caught.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from megarl.data.loading import PromptRecord, load_records
from megarl.datasets import EVAL_SETS

IGNORED = re.compile(r"\s+|\$|\\left|\\right|\\[,;:! ]|\\displaystyle")


def normalize_problem(text: str) -> str:
    """The text used to decide that two problems are the same."""
    text = text.lower().replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return IGNORED.sub("", text)


def problem_key(text: str) -> str:
    return hashlib.sha1(normalize_problem(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Overlap:
    train_id: str
    eval_set: str
    eval_id: str


class TrainEvalOverlapError(ValueError):
    """Training prompts appear in an evaluation set."""


def find_overlap(train: list[PromptRecord], eval_sets: dict[str, list[PromptRecord]] | None = None) -> list[Overlap]:
    """Every training record whose normalized problem is in one of the evaluation sets.

    eval_sets: {name: records}; default: all shipped evaluation sets.
    """
    if eval_sets is None:
        eval_sets = {name: load_records(name) for name in EVAL_SETS}
    eval_index: dict[str, tuple[str, str]] = {}
    for name, records in eval_sets.items():
        for record in records:
            eval_index.setdefault(problem_key(record.problem), (name, record.id))
    found = []
    for record in train:
        hit = eval_index.get(problem_key(record.problem))
        if hit is not None:
            found.append(Overlap(record.id, hit[0], hit[1]))
    return found


def check_no_overlap(train: list[PromptRecord], eval_sets: dict[str, list[PromptRecord]] | None = None) -> None:
    """Raise TrainEvalOverlapError naming the overlapping prompts, if there are any."""
    found = find_overlap(train, eval_sets)
    if found:
        examples = "; ".join(f"{o.train_id} = {o.eval_set}/{o.eval_id}" for o in found[:5])
        raise TrainEvalOverlapError(
            f"{len(found)} training prompts appear in evaluation sets (e.g. {examples}). Remove them with "
            "megarl.data.overlap.drop_overlapping(train) (or `megarl data overlap TRAIN --drop-out CLEAN.jsonl`) "
            "before training, so evaluation numbers stay meaningful."
        )


def drop_overlapping(train: list[PromptRecord], eval_sets: dict[str, list[PromptRecord]] | None = None) -> list[PromptRecord]:
    """The training records that do not appear in any evaluation set."""
    if eval_sets is None:
        eval_sets = {name: load_records(name) for name in EVAL_SETS}
    eval_keys = {problem_key(r.problem) for records in eval_sets.values() for r in records}
    return [r for r in train if problem_key(r.problem) not in eval_keys]
