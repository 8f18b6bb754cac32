"""`megarl grade`: grade the responses in a JSON Lines file against their gold answers.

Each input row has `response` and `answer` (a string or a list of acceptable answers; `gold`, as a
training run's samples.jsonl names it, is read the same way), and optionally `id` (default: the
line number), `template` (qwen-boxed, qwen25-math-cot, abel, r1, none) and `finish_reason`.
Every row is written back, as JSON Lines on standard output or to --out, with `extracted`,
`correct` and `reward` added. A summary (accuracy, answers/s, slowest answer) goes to
standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from megarl.config import ConfigError, DataConfig, RewardConfig, build_section
from megarl.data.loading import iter_json_objects
from megarl.data.templates import TEMPLATES
from megarl.rewards.extraction import EXTRACTION_MODES
from megarl.rewards.grading import GradingPool
from megarl.rewards.schemes import SCHEMES, compute_rewards

REQUIRED_FIELDS = ("response", "answer")
# field -> other names it goes by: a training run's samples.jsonl (megarl.monitoring.metrics) says `gold`
FIELD_ALIASES = {"answer": ("gold",)}
# flag -> field of the recipe's `reward` section; a flag left out keeps the section's default
REWARD_FLAGS = {"scheme": "scheme", "extraction": "extraction", "timeout": "timeout_s"}
CHUNK_ROWS = 1024

EXAMPLE = """example:
  megarl grade rollouts.jsonl --out graded.jsonl --timeout 5 --template qwen-boxed
  megarl grade rollouts.jsonl --extraction qwen-math   # grade as SimpleRL-Zoo's reward does
  megarl grade runs/tiny_cpu/samples.jsonl --template none   # a training run's logged samples, as they are
  echo '{"id": 1, "response": "so \\\\boxed{\\\\frac12}", "answer": "0.5"}' | megarl grade -
"""


class InputError(ValueError):
    """A problem with the input file, named with its line number."""


def read_rows(path: str, default_template: str) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file ('-' for standard input), validated with line numbers."""
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8")
    rows = []
    try:
        for line_number, row in iter_json_objects(handle, path, InputError):
            for field, aliases in FIELD_ALIASES.items():
                alias = next((a for a in aliases if a in row), None)
                if field not in row and alias is not None:
                    row = {**row, field: row[alias]}
            missing = [field for field in REQUIRED_FIELDS if field not in row]
            if missing:
                raise InputError(
                    f"{path}: line {line_number}: missing field(s) {', '.join(missing)}; every row needs "
                    f"{', '.join(REQUIRED_FIELDS)} (answer, or gold, may be a list of acceptable answers)"
                )
            row.setdefault("id", f"line {line_number}")
            if not isinstance(row["response"], str):
                raise InputError(f"{path}: line {line_number}: 'response' must be a string")
            answer = row["answer"]
            if not (isinstance(answer, (str, int, float)) or (isinstance(answer, list) and answer)):
                raise InputError(f"{path}: line {line_number}: 'answer' must be a string, a number or a non-empty list")
            template = row.get("template", default_template)
            if template not in TEMPLATES:
                raise InputError(f"{path}: line {line_number}: unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
            rows.append(row)
    finally:
        if handle is not sys.stdin:
            handle.close()
    return rows


def _gold(answer: Any) -> str | list[str]:
    return [str(a) for a in answer] if isinstance(answer, list) else str(answer)


def grade_rows(rows: list[dict[str, Any]], config: RewardConfig, default_template: str, workers: int | None) -> tuple[list[dict], dict]:
    """Grade rows (grouped by template, in chunks); returns output rows and a summary."""
    from rich.progress import Progress

    graded: list[dict | None] = [None] * len(rows)
    seconds = [0.0] * len(rows)
    started = time.perf_counter()
    by_template: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_template.setdefault(row.get("template", default_template), []).append(index)
    with GradingPool(num_workers=workers, timeout=config.timeout_s, lazy=True) as pool, Progress(
        console=_stderr_console(), transient=True, disable=len(rows) < CHUNK_ROWS
    ) as progress:
        task = progress.add_task("grading", total=len(rows))
        for template, indices in by_template.items():
            for chunk_start in range(0, len(indices), CHUNK_ROWS):
                chunk = indices[chunk_start : chunk_start + CHUNK_ROWS]
                results = compute_rewards(
                    [rows[i]["response"] for i in chunk],
                    [_gold(rows[i]["answer"]) for i in chunk],
                    config,
                    template=template,
                    finish_reasons=[rows[i].get("finish_reason") for i in chunk],
                    pool=pool,
                )
                for i, result in zip(chunk, results):
                    graded[i] = {**rows[i], "extracted": result.extracted, "correct": result.correct, "reward": result.reward}
                    seconds[i] = result.seconds
                progress.advance(task, len(chunk))
        timeouts = pool.stats.timeouts
    elapsed = time.perf_counter() - started
    slowest = max(range(len(rows)), key=seconds.__getitem__) if rows else None
    summary = {
        "rows": len(rows),
        "correct": sum(1 for row in graded if row and row["correct"]),
        "accuracy": (sum(1 for row in graded if row and row["correct"]) / len(rows)) if rows else 0.0,
        "answers_per_s": len(rows) / elapsed if elapsed > 0 else 0.0,
        "seconds": elapsed,
        "timeouts": timeouts,
        "slowest_id": rows[slowest]["id"] if slowest is not None else None,
        "slowest_s": seconds[slowest] if slowest is not None else 0.0,
    }
    return graded, summary  # type: ignore[return-value]


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def write_rows(rows: list[dict], out: str | None) -> None:
    """JSON Lines to stdout, or atomically to `out` (temp file, then rename)."""
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if out is None:
        sys.stdout.write(lines)
        sys.stdout.flush()
        return
    directory = os.path.dirname(os.path.abspath(out))
    file_descriptor, temp_path = tempfile.mkstemp(prefix=".grade-", suffix=".jsonl.tmp", dir=directory)
    try:
        with os.fdopen(file_descriptor, "w", encoding="utf-8") as handle:
            handle.write(lines)
        os.replace(temp_path, out)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megarl grade",
        description="Grade responses in a JSON Lines file (fields response, answer or gold[, id, template, finish_reason]).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", help="input JSON Lines file, or - for standard input")
    parser.add_argument("--out", help="write graded rows here instead of standard output")
    default = {flag: RewardConfig.model_fields[field].default for flag, field in REWARD_FLAGS.items()}
    # No argparse defaults for the reward flags: the recipe section's defaults (megarl.config) apply.
    parser.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help=f"hard limit per answer in seconds (default {default['timeout']})")
    parser.add_argument("--template", default=DataConfig.model_fields["template"].default, choices=list(TEMPLATES),
                        help="template for rows without one (default %(default)s, as data.template)")
    parser.add_argument("--scheme", default=argparse.SUPPRESS, choices=SCHEMES, help=f"reward scheme (default {default['scheme']})")
    parser.add_argument("--extraction", default=argparse.SUPPRESS, choices=EXTRACTION_MODES,
                        help="answer extraction: 'boxed' (strict, the last \\boxed{}), 'qwen-math' (Qwen2.5-Math's order: "
                             "last box, 'the answer is', last number; SimpleRL-Zoo's reward), or megarl's 'answer_is' / "
                             f"'last_number' fallbacks after the box (default {default['extraction']})")
    parser.add_argument("--workers", type=int, default=None, help="grading worker processes (default min(4, cores))")
    return parser


def reward_section(args: argparse.Namespace) -> RewardConfig:
    """The `reward` section the flags describe: the flags given, the section's defaults for the rest."""
    return build_section(RewardConfig, "reward", {field: getattr(args, flag) for flag, field in REWARD_FLAGS.items() if hasattr(args, flag)})


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = reward_section(args)
    except ConfigError as error:  # e.g. --timeout 0: "reward.timeout_s=0.0: Input should be greater than 0"
        print(f"megarl grade: {error}", file=sys.stderr)
        return 2
    try:
        rows = read_rows(args.file, args.template)
    except InputError as error:
        print(f"megarl grade: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError:
        print(f"megarl grade: no such file: {args.file}", file=sys.stderr)
        return 2
    graded, summary = grade_rows(rows, config, args.template, args.workers)
    write_rows(graded, args.out)
    print(
        f"graded {summary['rows']} answers: accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['rows']}), "
        f"{summary['answers_per_s']:.0f} answers/s, {summary['timeouts']} timeouts, "
        f"slowest answer id={summary['slowest_id']} {summary['slowest_s']:.3f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
