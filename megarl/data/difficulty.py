"""Difficulty control as in SimpleRL-Zoo: MATH level ranges and the easy/medium/hard presets.

easy = GSM8K train + MATH level 1, medium = MATH levels 1-4, hard = MATH levels 3-5 (the
zero-RL default). The paper's level per model (SimpleRL-Zoo, arXiv 2503.18892 and the README
of hkust-nlp/simpleRL-reason): easy for Llama-3.1-8B, Mistral-7B and DeepSeek-Math-7B, medium
for Qwen2.5-0.5B, hard for the rest. Recipes name a level in `data.train` (`[easy]`), and
`megarl.data.load_prompts` loads it. Finer control by measured pass rate lives in megarl.data.pass_rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from megarl.data.loading import PromptRecord, load_records


@dataclass(frozen=True)
class DifficultyPart:
    source: str  # a shipped set name or a path
    min_level: int | None = None  # None: no level filter (GSM8K has no levels)
    max_level: int | None = None


DIFFICULTY_PRESETS: dict[str, tuple[DifficultyPart, ...]] = {
    "easy": (DifficultyPart("gsm8k_train"), DifficultyPart("math_lvl1_train", 1, 1)),
    "medium": (DifficultyPart("math_lvl1to4_train", 1, 4),),
    "hard": (DifficultyPart("math_lvl3to5_train", 3, 5),),
}


def select_by_level(records: list[PromptRecord], min_level: int, max_level: int) -> list[PromptRecord]:
    """Records whose MATH level lies in [min_level, max_level]; an error if none has a level."""
    if min_level > max_level:
        raise ValueError(f"min_level={min_level} is above max_level={max_level}")
    if records and all(r.level is None for r in records):
        raise ValueError(
            f"none of the {len(records)} records has a 'level' field, so a level range cannot select any; "
            "use a MATH-style set with levels or drop the level filter"
        )
    return [r for r in records if r.level is not None and min_level <= r.level <= max_level]


def load_difficulty_preset(name: str) -> list[PromptRecord]:
    """The training prompts of a preset (easy, medium, hard) from the shipped sets."""
    if name not in DIFFICULTY_PRESETS:
        raise ValueError(f"unknown difficulty preset {name!r}; use one of {', '.join(DIFFICULTY_PRESETS)}")
    records: list[PromptRecord] = []
    for part in DIFFICULTY_PRESETS[name]:
        part_records = load_records(part.source)
        if part.min_level is not None or part.max_level is not None:
            part_records = select_by_level(part_records, part.min_level or 1, part.max_level or 5)
        records.extend(part_records)
    return records
