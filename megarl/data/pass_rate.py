"""Difficulty by measured pass rate: sample k answers per prompt, grade them, keep a pass-rate band.

`measure_pass_rates(records, sample_fn, k)` renders each prompt with a template, asks
`sample_fn(prompts, k)` for k responses per prompt, grades them with the math grader and
returns one `PassRate` per record. `sample_fn` is where a model comes in: the rollout engine
(SGLang or megarl's built-in server) provides one for `megarl data filter`; any callable with
the same shape works (a list of prompt strings and k → for each prompt, k responses, each a
string or a (text, finish_reason) pair).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from megarl.data.loading import PromptRecord
from megarl.data.templates import render_prompt
from megarl.rewards.grading import DEFAULT_TIMEOUT_S, GradingPool, grade_batch

Response = str | tuple[str, Any]
SampleFn = Callable[[list[str], int], Sequence[Sequence[Response]]]


@dataclass
class PassRate:
    id: str
    k: int
    correct: int
    truncated: int

    @property
    def pass_rate(self) -> float:
        return self.correct / self.k if self.k else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "pass_rate": self.pass_rate}


def measure_pass_rates(
    records: Sequence[PromptRecord],
    sample_fn: SampleFn,
    k: int,
    template: str = "qwen-boxed",
    tokenizer: Any = None,
    batch_size: int = 64,
    timeout: float = DEFAULT_TIMEOUT_S,
    pool: GradingPool | None = None,
    show_progress: bool = True,
) -> list[PassRate]:
    """Pass rate of each record over k sampled responses, graded against its gold answer."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 samples per prompt")
    from megarl.monitoring.console import Progress

    rates: list[PassRate] = []
    with Progress("sampling and grading", total=len(records), unit="prompts", enabled=show_progress) as progress:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            prompts = [render_prompt(template, r.problem, tokenizer) for r in batch]
            samples = sample_fn(prompts, k)
            if len(samples) != len(batch):
                raise ValueError(f"sample_fn returned {len(samples)} groups for {len(batch)} prompts; return one group per prompt")
            texts, reasons, golds = [], [], []
            for record, group in zip(batch, samples):
                if len(group) != k:
                    raise ValueError(f"sample_fn returned {len(group)} responses for prompt {record.id!r}; expected k={k}")
                for response in group:
                    text, reason = (response, None) if isinstance(response, str) else (response[0], response[1])
                    texts.append(text)
                    reasons.append(reason)
                    golds.append(record.answer)
            results = grade_batch(texts, golds, template=template,
                                  timeout=timeout, finish_reasons=reasons, pool=pool)
            for index, record in enumerate(batch):
                group = results[index * k : (index + 1) * k]
                rates.append(PassRate(record.id, k, sum(r.correct for r in group), sum(r.truncated for r in group)))
            progress.update(len(batch))
    return rates


def filter_by_pass_rate(
    records: Sequence[PromptRecord], rates: Sequence[PassRate], min_rate: float = 0.0, max_rate: float = 1.0
) -> list[PromptRecord]:
    """Records whose pass rate lies in [min_rate, max_rate] (e.g. drop all-solved and never-solved)."""
    if not 0.0 <= min_rate <= max_rate <= 1.0:
        raise ValueError(f"need 0 <= min_rate <= max_rate <= 1, got min_rate={min_rate} max_rate={max_rate}")
    if len(records) != len(rates):
        raise ValueError(f"{len(records)} records but {len(rates)} pass rates")
    kept = []
    for record, rate in zip(records, rates):
        if record.id != rate.id:
            raise ValueError(f"pass rate for {rate.id!r} is paired with record {record.id!r}; keep them in the same order")
        if min_rate <= rate.pass_rate <= max_rate:
            kept.append(record)
    return kept


def write_jsonl_atomic(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Write JSON Lines to a temp file beside `path`, then rename over it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    file_descriptor, temp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=directory)
    try:
        with os.fdopen(file_descriptor, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def write_pass_rates(path: str | os.PathLike, rates: Sequence[PassRate]) -> None:
    write_jsonl_atomic(path, [rate.to_dict() for rate in rates])


def read_pass_rates(path: str | os.PathLike) -> list[PassRate]:
    rates = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                rates.append(PassRate(str(row["id"]), int(row["k"]), int(row["correct"]), int(row.get("truncated", 0))))
    return rates


def record_to_row(record: PromptRecord) -> dict:
    """A record as a JSON Lines row in the shipped format."""
    row = {"id": record.id, "problem": record.problem, "answer": record.answer}
    if record.level is not None:
        row["level"] = record.level
    if record.subject is not None:
        row["subject"] = record.subject
    row.update(record.extra)
    return row
