"""Reward schemes: turn a grade into a scalar reward, and user reward functions by import path.

Schemes (`RewardConfig.scheme`):
- "simplerl": SimpleRL's rule, +1 correct, -0.5 answered but wrong, -1 no boxed answer (also when
  another extraction rule found a correct unboxed answer: SimpleRL v0's `experience_maker.py`
  gives -1 to every response without "boxed").
- "binary": 1 correct, 0 otherwise (Dr. GRPO); truncated responses get `truncated_reward` (0).
- "r1": 1 when the answer is correct and the r1 format (<think>...</think><answer>...</answer>)
  holds, else 0 (the r1-template recipe of Dr. GRPO / understand-r1-zero).
On top of any scheme, `format_weight` adds weight x (format followed): for the r1 template the
r1 shape, for others a `\\boxed{}` answer. SimpleRL-Zoo found rigid format rewards hurt some
base models, so it is 0 (off) by default.

A user task replaces math grading with `reward_function="my_pkg.rewards:score"`: a function
`score(response: str, gold, metadata: dict) -> float` (see `compute_rewards`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

from megarl.rewards.extraction import EXTRACTION_MODES, ExtractionMode, is_truncated
from megarl.rewards.grading import DEFAULT_TIMEOUT_S, GradeResult, GradingPool, grade_batch

RewardFunction = Callable[[str, Any, dict], float]
SCHEMES = ("simplerl", "binary", "r1")


@dataclass
class RewardConfig:
    """How rollouts are rewarded. Values match the paper recipes by default where one exists."""

    scheme: Literal["simplerl", "binary", "r1"] = "binary"
    correct_reward: float = 1.0
    wrong_reward: float | None = None  # None: the scheme's default (-0.5 simplerl, 0 otherwise)
    no_answer_reward: float | None = None  # None: the scheme's default (-1 simplerl, 0 otherwise)
    truncated_reward: float | None = None  # None: the scheme's default (0 binary/r1; simplerl grades as usual)
    format_weight: float = 0.0  # added when the format is followed (r1 shape, or a \boxed{} answer)
    reward_function: str | None = None  # "module:function" replaces math grading (user tasks)
    timeout: float = DEFAULT_TIMEOUT_S  # seconds per symbolic comparison
    extraction_mode: ExtractionMode = "boxed"  # see megarl.rewards.extraction: "boxed" or "qwen-math" (the papers')
    extra: dict = field(default_factory=dict)  # passed to a custom reward function as metadata

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"reward.scheme={self.scheme!r} is not a known scheme; use one of {', '.join(SCHEMES)}")
        if self.timeout <= 0:
            raise ValueError(f"reward.timeout={self.timeout} must be > 0 seconds")
        if self.extraction_mode not in EXTRACTION_MODES:
            raise ValueError(f"reward.extraction={self.extraction_mode!r} is not a known mode; use one of {', '.join(EXTRACTION_MODES)}")
        if self.format_weight < 0:
            raise ValueError(f"reward.format_weight={self.format_weight} must be >= 0 (0 turns the format reward off)")
        if self.reward_function is not None:
            load_reward_function(self.reward_function)  # fail at config time, not mid-training

    def resolved(self) -> tuple[float, float, float | None]:
        """(wrong, no_answer, truncated) rewards with the scheme's defaults filled in."""
        if self.scheme == "simplerl":
            defaults = (-0.5, -1.0, None)
        else:
            defaults = (0.0, 0.0, 0.0)
        wrong = defaults[0] if self.wrong_reward is None else self.wrong_reward
        no_answer = defaults[1] if self.no_answer_reward is None else self.no_answer_reward
        truncated = defaults[2] if self.truncated_reward is None else self.truncated_reward
        return wrong, no_answer, truncated


def apply_reward(result: GradeResult, config: RewardConfig) -> float:
    """The scalar reward of one graded response under `config`."""
    wrong, no_answer, truncated = config.resolved()
    if result.truncated and truncated is not None:
        reward = truncated
    elif config.scheme == "simplerl" and result.answer_source not in ("boxed", "r1_answer"):
        reward = no_answer
    elif config.scheme == "r1":
        reward = config.correct_reward if (result.correct and result.format_ok) else (wrong if result.has_answer else no_answer)
    elif result.correct:
        reward = config.correct_reward
    elif result.has_answer:
        reward = wrong
    else:
        reward = no_answer
    if config.format_weight:
        followed = result.format_ok if result.format_ok is not None else result.answer_source == "boxed"
        reward += config.format_weight * float(bool(followed))
    return float(reward)


def load_reward_function(path: str) -> RewardFunction:
    """Import `module:function` (e.g. "my_pkg.rewards:score") and check that it is callable."""
    if ":" not in path:
        raise ValueError(f"reward_function={path!r} must be 'module:function', e.g. 'my_pkg.rewards:score'")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"reward_function={path!r}: cannot import module {module_name!r} ({error}); check PYTHONPATH") from error
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ValueError(f"reward_function={path!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise ValueError(f"reward_function={path!r} is not callable")
    return function  # type: ignore[return-value]


def compute_rewards(
    responses: Sequence[str],
    golds: Sequence[Any],
    config: RewardConfig | None = None,
    template: str = "qwen-boxed",
    finish_reasons: Sequence[object] | None = None,
    metadata: Sequence[dict] | None = None,
    pool: GradingPool | None = None,
) -> list[GradeResult]:
    """Rewards of a rollout: math grading with the configured scheme, or the user's function.

    A user function gets (response, gold, metadata) with metadata = config.extra plus the
    row's own metadata and `finish_reason`; its float is the reward, and `correct` is
    reward > 0 (for logging accuracy).
    """
    config = config or RewardConfig()
    if config.reward_function is None:
        results = grade_batch(
            responses,
            golds,
            template=template,
            timeout=config.timeout,
            finish_reasons=finish_reasons,
            pool=pool,
            extraction_mode=config.extraction_mode,
        )
        for result in results:
            result.reward = apply_reward(result, config)
        return results
    function = load_reward_function(config.reward_function)
    results = []
    for index, (response, gold) in enumerate(zip(responses, golds, strict=True)):
        row_metadata = dict(config.extra)
        if metadata is not None:
            row_metadata.update(metadata[index])
        finish_reason = finish_reasons[index] if finish_reasons is not None else None
        row_metadata["finish_reason"] = finish_reason
        reward = float(function(response, gold, row_metadata))
        results.append(
            GradeResult(extracted=None, correct=reward > 0, reward=reward, truncated=is_truncated(finish_reason), method="custom")
        )
    return results
