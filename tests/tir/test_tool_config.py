"""The `tool` section: a clear error for an unknown format; SimpleTIR's filters and the tool/* metrics."""

import pytest

from megarl.config import ConfigError, ToolConfig, load_config
from megarl.rollout.multi_turn import ToolCall, TurnSample, filtered_out, tool_metrics


def test_an_unknown_format_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="unknown tool.format 'fo'; use one of torl, tags"):
        load_config("configs/tiny_cpu_tool.yaml", ["tool.format=fo"], check_files=False)


def _sample(calls, mask):
    return TurnSample(prompt_index=0, sample_index=0, output_ids=list(range(len(mask))), text="", logprobs=[0.0] * sum(mask),
                      finish_reason="stop", matched_stop=None, weight_version=None, prompt_tokens=3,
                      completion_tokens=len(mask), server="", loss_mask=mask, tool_calls=calls, turns=1 + len(calls))


def test_filters_and_metrics():
    ok, err, void = ToolCall("ok", 3, 0.1), ToolCall("error", 2, 0.1), ToolCall("none", 0, 0.0)
    samples = [_sample([ok], [1, 0, 0, 0, 1]), _sample([ok, err], [1, 0, 0, 0, 1, 0, 0, 1]), _sample([void], [1, 1])]
    assert [filtered_out(s, ToolConfig()) for s in samples] == [False, False, False]
    assert [filtered_out(s, ToolConfig(filter_error_trajectories=True)) for s in samples] == [False, True, False]
    assert [filtered_out(s, ToolConfig(filter_void_turns=True)) for s in samples] == [False, False, True]
    m = tool_metrics(samples)
    assert m["tool/calls_per_sample"] == pytest.approx(3 / 3)  # a void turn ran nothing
    assert m["tool/error_rate"] == pytest.approx(1 / 3) and m["tool/timeout_rate"] == 0.0
    assert m["tool/output_tokens"] == pytest.approx((3 + 5 + 0) / 3) and m["tool/void_turn_rate"] == pytest.approx(1 / 3)
    assert m["tool/turns"] == pytest.approx((2 + 3 + 2) / 3)


def test_the_step_line_shows_tool_calls_only_for_tool_runs():
    from megarl.monitoring.console import step_line

    assert "tool calls 0.89" in step_line(16, 16, {"reward/mean": 0.4, "tool/calls_per_sample": 0.891})
    assert "tool calls 0.00" in step_line(1, 16, {"reward/mean": 0.0, "tool/calls_per_sample": 0.0})
    assert "tool" not in step_line(1, 16, {"reward/mean": 0.4})
