"""Named evaluation protocols give each benchmark the paper's sampling."""

import pytest

from megarl.config import EvalConfig
from megarl.evaluation.harness import pass_at_k, sampling_for
from megarl.evaluation.protocols import get_protocol


def test_simplerl_zoo_protocol_per_benchmark():
    ev = EvalConfig(benchmarks=["math500", "aime24"], protocol="simplerl-zoo", n=4, temperature=0.0)
    assert sampling_for(ev, "math500", "qwen-boxed") == (1, 1.0, 0.95, 16000, ("assistant", "user", "_end", "_start"))
    assert sampling_for(ev, "aime24", "abel") == (32, 1.0, 0.95, 16000, ("Question:", "Answer:"))


def test_greedy_and_custom():
    assert sampling_for(EvalConfig(protocol="greedy"), "amc23", "r1") == (1, 0.0, 1.0, 3000, ())
    custom = EvalConfig(n=4, temperature=0.7, top_p=0.9, max_new_tokens=77)
    assert sampling_for(custom, "amc23", "abel") == (4, 0.7, 0.9, 77, ())
    assert get_protocol("custom") is None
    with pytest.raises(ValueError, match="unknown eval.protocol 'zoo'; use one of custom, simplerl-zoo, greedy"):
        get_protocol("zoo")


def test_pass_at_one_is_the_mean_over_samples():
    # avg@n (the protocols' score) equals the mean of unbiased pass@1 over problems.
    correct, n = [3, 0, 8], 8
    assert sum(pass_at_k(n, c, 1) for c in correct) / len(correct) == pytest.approx(sum(correct) / (n * len(correct)))
