"""Rewards for math reasoning: answer extraction, equivalence, hard-limited grading, reward schemes.

Typical use in a trainer step (the recipe's `reward` section, megarl.config.RewardConfig, holds
the scheme, extraction and grading limit)::

    from megarl.config import RewardConfig
    from megarl.rewards import compute_rewards
    results = compute_rewards(responses, gold_answers, RewardConfig(scheme="binary"), template="qwen-boxed",
                              finish_reasons=finish_reasons)
    rewards = [r.reward for r in results]
"""

from megarl.rewards.equivalence import quick_equal, symbolic_equal
from megarl.rewards.extraction import ExtractedAnswer, extract_answer, extract_r1_answer, is_truncated, r1_format_ok
from megarl.rewards.grading import DEFAULT_TIMEOUT_S, GradeResult, GradingPool, grade_answer, grade_batch
from megarl.rewards.normalization import normalize_answer
from megarl.rewards.schemes import SCHEMES, apply_reward, compute_rewards, load_reward_function

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ExtractedAnswer",
    "GradeResult",
    "GradingPool",
    "SCHEMES",
    "apply_reward",
    "compute_rewards",
    "extract_answer",
    "extract_r1_answer",
    "grade_answer",
    "grade_batch",
    "is_truncated",
    "load_reward_function",
    "normalize_answer",
    "quick_equal",
    "r1_format_ok",
    "symbolic_equal",
]
