"""Reflection-behaviour rates as SimpleRL-Zoo tracks them: the share of responses containing
self-verification or backtracking phrases ("wait", "let me check", "recheck", "alternatively", ...)."""

from __future__ import annotations

import re
from typing import Sequence


def reflection_pattern(words: Sequence[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(w.lower()).replace(r"\ ", r"\s+") for w in words)
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def reflection_rates(responses: Sequence[str], correct: Sequence[bool], words: Sequence[str]) -> dict[str, float]:
    """{'reflection_rate': share of all responses, 'reflection_rate_correct': among correct ones}."""
    pattern = reflection_pattern(words)
    hits = [bool(pattern.search(r)) for r in responses]
    among_correct = [h for h, c in zip(hits, correct) if c]
    return {
        "reflection_rate": sum(hits) / len(hits) if hits else 0.0,
        "reflection_rate_correct": sum(among_correct) / len(among_correct) if among_correct else 0.0,
    }
