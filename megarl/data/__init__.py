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



def load_prompts(source: str, levels: list[int] | None = None) -> list[PromptRecord]:
    """Prompt records for training or evaluation from a shipped set name, a path, a generated set a
    plugin registered (megarl.data.sources; the CPU demo's `toy-arith:rl_train`, `toy-arith:heldout[:N]`,
    `toy-arith-long:...`), or a
    SimpleRL-Zoo difficulty level by name: `easy` (GSM8K train + MATH level 1), `medium` (MATH
    1-4), `hard` (MATH 3-5).

    `levels`: keep only MATH problems whose level is in the list (difficulty control)."""
    from megarl.data.sources import parse_generated

    generated = parse_generated(source)  # a registered set with a bad split or count raises
    if generated is not None:
        made, split, count = generated
        records = [PromptRecord(id=r["id"], problem=made.prompt(r["problem"]), answer=r["answer"], source=source)
                   for r in made.rows(split, count)]
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
