"""The grader against its case table, the shipped evaluation golds, and adversarial input."""

from __future__ import annotations

import json
import time

import pytest

from megarl.datasets import EVAL_SETS, dataset_path
from megarl.rewards import GradingPool, grade_answer, grade_batch
from megarl.rewards.equivalence import quick_equal
from megarl.rewards.extraction import extract_answer, last_boxed_content, r1_format_ok
from grading_cases import CASES, B, R1  # noqa: E402  (beside this file; pytest puts its folder on sys.path)

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def pool():
    with GradingPool(num_workers=2, timeout=TIMEOUT_S) as grading_pool:
        yield grading_pool


def test_case_table_is_large_and_covers_every_category():
    assert len(CASES) >= 150
    categories = {case[0] for case in CASES}
    for needed in ("fraction", "radical", "pi", "degrees", "percent", "units", "scientific", "interval", "set",
                   "tuple", "matrix", "equation", "text", "choice", "boxed", "r1", "adversarial"):
        assert needed in categories, needed
    assert any(case[3] for case in CASES) and any(not case[3] for case in CASES)


@pytest.mark.parametrize("template", ["qwen-boxed", "r1"])
def test_case_table(pool, template):
    cases = [case for case in CASES if case[4] == template]
    results = grade_batch([c[2] for c in cases], [c[1] for c in cases], template=template, timeout=TIMEOUT_S, pool=pool)
    wrong = [
        f"[{c[0]}] gold={c[1]!r:.60} extracted={(r.extracted or '')!r:.60} expected={c[3]} got={r.correct} ({r.method})"
        for c, r in zip(cases, results)
        if r.correct != c[3]
    ]
    assert not wrong, "\n".join(wrong)
    # No answer may cost more than the limit (plus scheduling slack on a shared 2-core machine).
    assert max(r.seconds for r in results) < TIMEOUT_S + 1.0


def test_every_shipped_eval_gold_grades_correct_against_itself(pool):
    for name in EVAL_SETS:
        rows = [json.loads(line) for line in dataset_path(name).read_text().splitlines()]
        results = grade_batch([B(row["answer"]) for row in rows], [row["answer"] for row in rows], pool=pool)
        wrong = [row["id"] for row, result in zip(rows, results) if not result.correct]
        assert not wrong, f"{name}: golds not equal to themselves: {wrong[:10]}"


def test_perturbed_golds_grade_wrong(pool):
    rows = [json.loads(line) for line in dataset_path("math500").read_text().splitlines()]
    # Replace the gold with another problem's gold that differs from it as a normalized string.
    responses, golds = [], []
    for index, row in enumerate(rows[:200]):
        other = rows[(index + 37) % len(rows)]["answer"]
        if quick_equal(other, row["answer"]) is True:
            continue
        responses.append(B(other))
        golds.append(row["answer"])
    results = grade_batch(responses, golds, pool=pool)
    false_positives = [(g, r.extracted) for g, r in zip(golds, results) if r.correct]
    assert not false_positives, false_positives


def test_multiple_gold_answers(pool):
    assert grade_answer(B("\\frac{1}{2}"), ["3", "0.5"], pool=pool).correct
    assert not grade_answer(B("4"), ["3", "0.5"], pool=pool).correct
    with pytest.raises(ValueError, match="empty"):
        grade_answer(B("4"), [], pool=pool)


def test_hard_kill_of_a_worker_stuck_in_c_code():
    # Without the in-worker timer, 10^(10^8) runs inside CPython's integer power (C code that
    # never checks signals); the parent must kill the worker at the limit and replace it.
    with GradingPool(num_workers=1, timeout=1.5, soft_limit_fraction=None) as hard_pool:
        started = time.monotonic()
        stuck, after = grade_batch([B("10^{10^{8}}"), B("\\frac{2}{\\sqrt{2}}")], ["5", "\\sqrt{2}"], timeout=1.5, pool=hard_pool)
        assert stuck.timed_out and not stuck.correct and stuck.method == "timeout"
        assert stuck.seconds < 1.5 + 1.0
        assert hard_pool.stats.killed_workers == 1
        assert after.correct and after.method == "symbolic"  # the replacement worker graded it
        assert time.monotonic() - started < 30


def test_truncated_flag_and_r1_format():
    result = grade_answer(B("7"), "7", finish_reason={"type": "length", "length": 100})
    assert result.truncated and result.correct
    assert not grade_answer(B("7"), "7", finish_reason={"type": "stop", "matched": 151643}).truncated
    assert grade_answer(B("7"), "7", finish_reason="length").truncated
    assert r1_format_ok(R1("7"))
    assert r1_format_ok(" think </think> <answer> 7")  # </answer> trimmed by the stop string
    assert not r1_format_ok(" <answer> 7 </answer>")  # no </think>
    assert not r1_format_ok(" a </think> <answer> 7 </answer> and more text")
    assert not r1_format_ok(" a </think> b </think> <answer> 7 </answer>")
    assert not r1_format_ok(" </think> <answer> 7 </answer>")  # empty reasoning
    assert grade_answer(R1("7"), "7", template="r1").format_ok is True


def test_extraction_fallbacks():
    text = "So we get 3, then 5. The answer is 12 apples. Later 99"
    assert extract_answer(text, "boxed").text is None
    assert extract_answer(text, "answer_is").text == "12 apples"
    assert extract_answer("Total 1,234 then 56.5 end", "last_number").text == "56.5"
    assert extract_answer("\\boxed{3} The answer is 4", "answer_is").text == "3"  # the box wins
    with pytest.raises(ValueError, match="extraction mode"):
        extract_answer("x", "nope")  # type: ignore[arg-type]


def test_extraction_is_linear_time():
    nested = "\\boxed{" * 50_000 + "1"  # every box unclosed: a naive scan is quadratic
    started = time.perf_counter()
    assert last_boxed_content(nested) is None
    assert last_boxed_content("x" * 2_000_000 + "\\boxed{5}") == "5"
    assert time.perf_counter() - started < 2.0
