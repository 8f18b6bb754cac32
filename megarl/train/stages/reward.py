"""Reward stage: grade sampled responses against their gold answers under the recipe's reward scheme."""

from __future__ import annotations

from typing import Sequence

from megarl.config import RewardConfig as RewardSection
from megarl.rewards.schemes import RewardConfig, compute_rewards
from megarl.rollout.client import Sample


def reward_settings(section: RewardSection) -> RewardConfig:
    return RewardConfig(scheme=section.scheme, format_weight=section.format_weight, timeout=section.timeout_s,
                        reward_function=section.custom, extraction_mode=section.extraction)


def grade(samples: Sequence[Sample], golds: Sequence[str], settings: RewardConfig, template: str) -> list:
    """One grade (reward, correct, has_answer) per sample, in order."""
    return compute_rewards([s.text for s in samples], list(golds), settings, template=template,
                           finish_reasons=[s.finish_reason for s in samples])
