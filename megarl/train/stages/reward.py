"""Reward stage: grade sampled responses against their gold answers under the recipe's reward scheme."""

from __future__ import annotations

from typing import Sequence

from megarl.config import RewardConfig
from megarl.rewards.schemes import compute_rewards
from megarl.rollout.client import Sample


def grade(samples: Sequence[Sample], golds: Sequence[str], reward: RewardConfig, template: str) -> list:
    """One grade (reward, correct, has_answer) per sample, in order, under the recipe's `reward` section."""
    return compute_rewards([s.text for s in samples], list(golds), reward, template=template,
                           finish_reasons=[s.finish_reason for s in samples])
