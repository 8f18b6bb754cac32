"""Reward schemes: turn a grade into a scalar reward, and user reward functions by import path.

Every function here takes the recipe's `reward` section (megarl.config.RewardConfig) as it is;
the defaults live there. Schemes (`reward.scheme`, the names in `RewardScheme`):
- "simplerl": SimpleRL's rule, +1 correct, -0.5 answered but wrong, -1 no boxed answer (also when
  another extraction rule found a correct unboxed answer: SimpleRL v0's `experience_maker.py`
  gives -1 to every response without "boxed").
- "binary": 1 correct, 0 otherwise (Dr. GRPO); truncated responses get 0 (understand-r1-zero
  `train_zero_math.py`: a response without EOS gets reward 0).
- "hf-math-verify": 1 correct, 0 otherwise, a truncated response graded like any other
  (SimpleRL-Zoo: hkust-nlp/simpleRL-reason v1 `verl/utils/reward_score/hf_math_verify.py`,
  `REWORD_FUNCTION_TYPE=mix`, has no truncation rule, and its script runs `remove_clip=False`).
- "r1": 1 when the answer is correct and the r1 format (<think>...</think><answer>...</answer>)
  holds, else 0 (the r1-template recipe of Dr. GRPO / understand-r1-zero).
On top of any scheme, `format_weight` adds weight x (format followed): for the r1 template the
r1 shape, for others a `\\boxed{}` answer. SimpleRL-Zoo found rigid format rewards hurt some
base models, so it is 0 (off) by default.

A user task replaces math grading with `reward.custom="my_pkg.rewards:score"`: a function
`score(response: str, gold, metadata: dict) -> float` (see `compute_rewards`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, get_args

from megarl.rewards.extraction import is_truncated
from megarl.rewards.grading import GradeResult, GradingPool, grade_batch

if TYPE_CHECKING:  # megarl.config imports this module for the scheme names
    from megarl.config import RewardConfig

RewardFunction = Callable[[str, Any, dict], float]
RewardScheme = Literal["simplerl", "binary", "hf-math-verify", "r1"]
SCHEMES: tuple[str, ...] = get_args(RewardScheme)


@dataclass(frozen=True)
class SchemeRewards:
    """The rewards one scheme gives."""

    correct: float
    wrong: float  # answered, but not equal to the gold answer
    no_answer: float  # no answer found (simplerl: no boxed answer)
    truncated: float | None  # cut at the token limit; None: graded like any other response


SCHEME_REWARDS: dict[str, SchemeRewards] = {
    "simplerl": SchemeRewards(correct=1.0, wrong=-0.5, no_answer=-1.0, truncated=None),
    "binary": SchemeRewards(correct=1.0, wrong=0.0, no_answer=0.0, truncated=0.0),
    "hf-math-verify": SchemeRewards(correct=1.0, wrong=0.0, no_answer=0.0, truncated=None),
    "r1": SchemeRewards(correct=1.0, wrong=0.0, no_answer=0.0, truncated=0.0),
}


def scheme_rewards(scheme: str) -> SchemeRewards:
    """The named scheme's rewards; an unknown name is an error that lists the known ones."""
    if scheme not in SCHEME_REWARDS:
        raise ValueError(f"reward.scheme={scheme!r} is not a known scheme; use one of {', '.join(SCHEMES)}")
    return SCHEME_REWARDS[scheme]


def apply_reward(result: GradeResult, reward: RewardConfig) -> float:
    """The scalar reward of one graded response under the recipe's `reward` section."""
    values = scheme_rewards(reward.scheme)
    if result.truncated and values.truncated is not None:
        value = values.truncated
    elif reward.scheme == "simplerl" and result.answer_source not in ("boxed", "r1_answer"):
        value = values.no_answer
    elif reward.scheme == "r1":
        value = values.correct if (result.correct and result.format_ok) else (values.wrong if result.has_answer else values.no_answer)
    elif result.correct:
        value = values.correct
    elif result.has_answer:
        value = values.wrong
    else:
        value = values.no_answer
    if reward.format_weight:
        followed = result.format_ok if result.format_ok is not None else result.answer_source == "boxed"
        value += reward.format_weight * float(bool(followed))
    return float(value)


def load_reward_function(path: str) -> RewardFunction:
    """Import `module:function` (e.g. "my_pkg.rewards:score") and check that it is callable."""
    if ":" not in path:
        raise ValueError(f"reward.custom={path!r} must be 'module:function', e.g. 'my_pkg.rewards:score'")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"reward.custom={path!r}: cannot import module {module_name!r} ({error}); check PYTHONPATH") from error
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ValueError(f"reward.custom={path!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise ValueError(f"reward.custom={path!r} is not callable")
    return function  # type: ignore[return-value]


def compute_rewards(
    responses: Sequence[str],
    golds: Sequence[Any],
    reward: RewardConfig,
    *,
    template: str,
    finish_reasons: Sequence[object] | None = None,
    metadata: Sequence[dict] | None = None,
    pool: GradingPool | None = None,
) -> list[GradeResult]:
    """Rewards of a rollout: math grading with the section's scheme, or the user's function.

    A user function (`reward.custom`) gets (response, gold, metadata) with metadata = the row's
    own metadata plus `finish_reason`; its float is the reward, and `correct` is reward > 0 (for
    logging accuracy).
    """
    if reward.custom is None:
        results = grade_batch(
            responses,
            golds,
            template=template,
            timeout=reward.timeout_s,
            finish_reasons=finish_reasons,
            pool=pool,
            extraction_mode=reward.extraction,
        )
        for result in results:
            result.reward = apply_reward(result, reward)
        return results
    function = load_reward_function(reward.custom)
    results = []
    for index, (response, gold) in enumerate(zip(responses, golds, strict=True)):
        row_metadata = dict(metadata[index]) if metadata is not None else {}
        finish_reason = finish_reasons[index] if finish_reasons is not None else None
        row_metadata["finish_reason"] = finish_reason
        value = float(function(response, gold, row_metadata))
        results.append(
            GradeResult(extracted=None, correct=value > 0, reward=value, truncated=is_truncated(finish_reason), method="custom")
        )
    return results
