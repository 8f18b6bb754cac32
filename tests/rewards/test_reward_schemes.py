"""Reward schemes (SimpleRL rule, binary, r1, format weight) and pluggable reward functions."""

from __future__ import annotations

import sys
import textwrap

import pytest

from megarl.config import ConfigError, RewardConfig, build_section
from megarl.rewards import SCHEMES, GradeResult, apply_reward, compute_rewards
from megarl.rewards.schemes import SCHEME_REWARDS, scheme_rewards


def grade(correct: bool, has_answer: bool = True, truncated: bool = False, format_ok=None, source="boxed") -> GradeResult:
    return GradeResult(extracted="1" if has_answer else None, correct=correct, has_answer=has_answer, truncated=truncated,
                       format_ok=format_ok, answer_source=source if has_answer else "none")


def test_simplerl_rule():
    config = RewardConfig(scheme="simplerl")
    assert apply_reward(grade(True), config) == 1.0
    assert apply_reward(grade(False), config) == -0.5
    assert apply_reward(grade(False, has_answer=False), config) == -1.0
    # SimpleRL's rule does not special-case truncation: a truncated response has no box.
    assert apply_reward(grade(False, has_answer=False, truncated=True), config) == -1.0


def test_binary_dr_grpo_truncated_is_zero():
    config = RewardConfig(scheme="binary")
    assert apply_reward(grade(True), config) == 1.0
    assert apply_reward(grade(False), config) == 0.0
    assert apply_reward(grade(False, has_answer=False), config) == 0.0
    assert apply_reward(grade(True, truncated=True), config) == 0.0


def test_hf_math_verify_grades_truncated_responses():
    # SimpleRL-Zoo's hf_math_verify.py (mix): 1 / 0 on correctness alone, no truncation rule.
    config = RewardConfig(scheme="hf-math-verify")
    assert apply_reward(grade(True), config) == 1.0
    assert apply_reward(grade(False), config) == 0.0
    assert apply_reward(grade(False, has_answer=False), config) == 0.0
    assert apply_reward(grade(True, truncated=True), config) == 1.0
    assert apply_reward(grade(True, truncated=True, source="answer_is"), config) == 1.0
    assert apply_reward(grade(False, truncated=True), config) == 0.0
    results = compute_rewards(["so it is 4", "\\boxed{4} and then"], ["4", "4"], RewardConfig(scheme="hf-math-verify", extraction="qwen-math"),
                              template="qwen-boxed", finish_reasons=[{"type": "length"}, {"type": "length"}])
    assert [r.reward for r in results] == [1.0, 1.0]
    assert all(r.truncated for r in results)


def test_r1_needs_format_and_correctness():
    config = RewardConfig(scheme="r1")
    assert apply_reward(grade(True, format_ok=True, source="r1_answer"), config) == 1.0
    assert apply_reward(grade(True, format_ok=False, source="r1_answer"), config) == 0.0
    assert apply_reward(grade(False, format_ok=True, source="r1_answer"), config) == 0.0


def test_format_weight_is_added_only_when_followed():
    config = RewardConfig(scheme="binary", format_weight=0.2)
    assert apply_reward(grade(False), config) == pytest.approx(0.2)  # boxed answer, wrong
    assert apply_reward(grade(False, has_answer=False), config) == 0.0
    assert apply_reward(grade(True, format_ok=True, source="r1_answer"), config) == pytest.approx(1.2)
    assert apply_reward(grade(True, format_ok=False, source="r1_answer"), config) == pytest.approx(1.0)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"reward.scheme='dapo': Input should be 'simplerl', 'binary', 'hf-math-verify' or 'r1'"):
        build_section(RewardConfig, "reward", {"scheme": "dapo"})
    with pytest.raises(ConfigError, match="reward.format_weight=-1"):
        build_section(RewardConfig, "reward", {"format_weight": -1})
    with pytest.raises(ConfigError, match="reward.custom: reward.custom='no_colon' must be 'module:function'"):
        build_section(RewardConfig, "reward", {"custom": "no_colon"})
    with pytest.raises(ValueError, match="cannot import module"):
        RewardConfig(custom="surely_not_a_module_xyz:score")


def test_one_scheme_vocabulary():
    # The names the recipe accepts are the ones megarl.rewards implements, and an unknown name
    # that got past the recipe (model_construct skips validation) is still a clear error.
    assert set(SCHEME_REWARDS) == set(SCHEMES) == {"simplerl", "binary", "hf-math-verify", "r1"}
    assert RewardConfig.model_fields["scheme"].annotation.__args__ == SCHEMES
    with pytest.raises(ValueError, match="reward.scheme='dapo' is not a known scheme; use one of simplerl, binary, hf-math-verify, r1"):
        scheme_rewards("dapo")
    with pytest.raises(ValueError, match="not a known scheme"):
        apply_reward(grade(True), RewardConfig.model_construct(scheme="dapo", format_weight=0.0))


def test_end_to_end_rewards_through_grading():
    responses = ["\\boxed{4}", "\\boxed{5}", "I think 4", "\\boxed{4}"]
    results = compute_rewards(responses, ["4"] * 4, RewardConfig(scheme="simplerl"), template="qwen-boxed",
                              finish_reasons=[None, None, None, {"type": "length"}])
    assert [r.reward for r in results] == [1.0, -0.5, -1.0, 1.0]
    results = compute_rewards(responses, ["4"] * 4, RewardConfig(scheme="binary"), template="qwen-boxed",
                              finish_reasons=[None, None, None, {"type": "length"}])
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 0.0]


def test_pluggable_reward_function(tmp_path, monkeypatch):
    module = tmp_path / "user_task_rewards.py"
    module.write_text(textwrap.dedent('''
        def exact_length(response, gold, metadata):
            return float(len(response) == int(gold)) * metadata.get("scale", 1.0)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = RewardConfig(custom="user_task_rewards:exact_length")
    results = compute_rewards(["abc", "abcd"], ["3", "3"], config, template="qwen-boxed", finish_reasons=["stop", "length"],
                              metadata=[{"scale": 2.0}, {"scale": 2.0}])
    assert [r.reward for r in results] == [2.0, 0.0]
    assert [r.correct for r in results] == [True, False]
    assert [r.truncated for r in results] == [False, True]
    with pytest.raises(ValueError, match="has no attribute"):
        RewardConfig(custom="user_task_rewards:missing")
    sys.modules.pop("user_task_rewards", None)
