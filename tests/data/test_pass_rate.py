"""Pass-rate filtering (with a plain Python sample_fn as the test input)."""

from __future__ import annotations

import pytest

from megarl.data import load_records
from megarl.data.pass_rate import filter_by_pass_rate, measure_pass_rates, read_pass_rates, write_pass_rates


def scripted_sample_fn(correct_per_prompt: dict[str, int], golds: dict[str, str]):
    """Test input standing in for a model: for the prompt of problem P, returns
    correct_per_prompt[P] boxed gold answers and the rest wrong (one of them truncated)."""

    def sample(prompts: list[str], k: int):
        groups = []
        for prompt in prompts:
            problem = next(p for p in golds if p in prompt)
            good = correct_per_prompt[problem]
            group = [f"so \\boxed{{{golds[problem]}}}"] * good
            group += [("so \\boxed{-12345}", {"type": "length"})] + ["no answer"] * (k - good - 1) if good < k else []
            groups.append(group)
        return groups

    return sample


def test_measure_and_filter_pass_rates(tmp_path):
    records = load_records("math500")[:6]
    golds = {r.problem: r.answer for r in records}
    solved = {r.problem: count for r, count in zip(records, [0, 1, 2, 3, 4, 4])}
    rates = measure_pass_rates(records, scripted_sample_fn(solved, golds), k=4, template="abel", show_progress=False)
    assert [r.correct for r in rates] == [0, 1, 2, 3, 4, 4]
    assert [r.truncated for r in rates] == [1, 1, 1, 1, 0, 0]
    kept = filter_by_pass_rate(records, rates, min_rate=0.25, max_rate=0.75)
    assert [r.id for r in kept] == [r.id for r in records[1:4]]
    path = tmp_path / "pass_rates.jsonl"
    write_pass_rates(path, rates)
    assert read_pass_rates(path) == rates
    with pytest.raises(ValueError, match="expected k=4"):
        measure_pass_rates(records[:1], lambda prompts, k: [["x"]], k=4, template="none", show_progress=False)
    with pytest.raises(ValueError, match="min_rate"):
        filter_by_pass_rate(records, rates, 0.8, 0.2)
