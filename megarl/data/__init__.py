"""Math prompt data: loading (JSONL/Parquet/HF datasets/shipped sets), templates, difficulty
presets, train/eval overlap checks, pass-rate filtering, and the trainer's resumable prompt stream (prompt_stream)."""

from megarl.data.difficulty import DIFFICULTY_PRESETS, load_difficulty_preset, select_by_level
from megarl.data.loading import PromptRecord, load_records
from megarl.data.overlap import TrainEvalOverlapError, check_no_overlap, drop_overlapping, find_overlap
from megarl.data.templates import TEMPLATES, get_template, render_prompt, stop_strings

__all__ = [
    "DIFFICULTY_PRESETS",
    "PromptRecord",
    "TEMPLATES",
    "TrainEvalOverlapError",
    "check_no_overlap",
    "drop_overlapping",
    "find_overlap",
    "get_template",
    "load_difficulty_preset",
    "load_records",
    "render_prompt",
    "select_by_level",
    "stop_strings",
]


from pathlib import Path  # noqa: E402

TOY_PREFIX = "toy-arith:"


def load_prompts(source: str, levels: list[int] | None = None) -> list[PromptRecord]:
    """Prompt records for training or evaluation from a shipped set name, a path, or the CPU
    demo's generated sets (`toy-arith:rl_train`, `toy-arith:heldout[:N]`, `toy-arith-long:...`, see
    megarl.demo.builtins), or a
    SimpleRL-Zoo difficulty level by name: `easy` (GSM8K train + MATH level 1), `medium` (MATH
    1-4), `hard` (MATH 3-5).

    `levels`: keep only MATH problems whose level is in the list (difficulty control)."""
    from megarl.demo.builtins import is_toy_source

    if is_toy_source(source) or source.startswith(TOY_PREFIX):  # a bad toy-arith: name fails in toy_source_rows
        from megarl.demo.builtins import toy_source_rows
        from megarl.demo.toy_task import format_prompt

        rows = toy_source_rows(source)
        # The toy model's prompt is the problem plus one newline (template "none").
        records = [PromptRecord(id=r["id"], problem=format_prompt(r["problem"]), answer=r["answer"], source=source)
                   for r in rows]
    elif source in DIFFICULTY_PRESETS and not Path(source).exists():
        records = load_difficulty_preset(source)
    else:
        records = load_records(source)
    if levels:
        wanted = set(levels)
        records = [r for r in records if r.level in wanted]
        if not records:
            raise ValueError(f"{source}: no problems with level in {sorted(wanted)}; check data.levels")
    return records
