"""Adversarial answers grade within the time limit, through the library and through `megarl grade`.

Every answer below once took longer than its limit in the trainer's own process (quadratic
regexes in normalization), or is a known hazard for sympy (power towers, deep nesting).
"""

from __future__ import annotations

import json
import time

import pytest

from megarl.rewards import GradingPool, grade_answer
from megarl.commands.grade import main as grade_main
from megarl.rewards.equivalence import MAX_ANSWER_CHARS, quick_equal
from megarl.rewards.normalization import normalize_answer

LIMIT_S = 2.0
DECIMAL_100K = "1." + "0" * 100_000 + "1"

# (name, answer inside \boxed{}, gold, expected verdict). The 100k-digit decimal comes first:
# before the fix it alone took about 40 s.
ADVERSARIAL = [
    ("100k-digit decimal", DECIMAL_100K, "1", False),
    ("100k-digit decimal against itself", DECIMAL_100K, DECIMAL_100K, True),
    ("100k trailing zeros", "1." + "0" * 100_000, "1", True),
    ("number then 500k letter-digit pairs", "1a" * 500_000 + ",", "1", False),
    ("1 MB of digits", "1" * 1_000_000, "5", False),
    ("1 MB of spaces around the answer", "5" + " " * 1_000_000, "5", True),
    ("nested braces", "{" * 20_000 + "1" + "}" * 20_000, "1", False),
    ("nested fractions", "\\frac{" * 5_000 + "1" + "}{2}" * 5_000, "1", False),
    ("power tower", "10^{10^{10^{10}}}", "5", False),
    ("huge power", "10^{10^{8}}", "5", False),
    ("factorial tower", "((10!)!)!", "3", False),
    ("a plain correct answer still grades", "\\frac{1}{2}", "0.5", True),
]


def boxed(answer: str) -> str:
    return f"Step by step.\nThe final answer is $\\boxed{{{answer}}}$."


@pytest.fixture(scope="module")
def pool():
    with GradingPool(num_workers=2, timeout=LIMIT_S) as grading_pool:
        grading_pool.compare([("x+1", ["1+x"])])  # wait until the workers are up
        yield grading_pool


@pytest.mark.parametrize("name,answer,gold,expected", ADVERSARIAL, ids=[case[0] for case in ADVERSARIAL])
def test_adversarial_answer_grades_within_the_limit(pool, name, answer, gold, expected):
    started = time.perf_counter()
    result = grade_answer(boxed(answer), gold, timeout=LIMIT_S, pool=pool)
    seconds = time.perf_counter() - started
    assert seconds < LIMIT_S, f"{name}: {seconds:.1f} s against a {LIMIT_S} s limit ({result.method})"
    assert result.correct is expected, f"{name}: graded {result.correct} ({result.method})"


def test_normalization_is_linear_on_pathological_families():
    # Each family is 200k characters; a quadratic step would take minutes on any of them.
    families = [
        "1." + "0" * 200_000 + "1",
        "1a" * 100_000 + ",",
        "e0" * 100_000 + ")",
        "1 " * 100_000 + "x,",
        "1" + " " * 200_000 + "cm,",
        "x=" + "1cm" * 60_000,
    ]
    for text in families:
        started = time.perf_counter()
        normalize_answer(text)
        quick_equal(text, "(1, 2)")
        assert time.perf_counter() - started < 1.0, text[:20]


def test_answers_over_the_length_limit_compare_as_exact_text_only():
    long_number = "1." + "0" * MAX_ANSWER_CHARS  # numerically 1, but no real answer is this long
    assert quick_equal(long_number, "1") is False
    assert quick_equal(long_number, long_number) is True
    assert quick_equal("1.0000", "1") is True  # short answers normalize as before


def test_grade_cli_under_timeout_2(tmp_path, capsys):
    source = tmp_path / "adversarial.jsonl"
    source.write_text("".join(json.dumps({"id": name, "response": boxed(answer), "answer": gold}) + "\n"
                              for name, answer, gold, _ in ADVERSARIAL))
    out = tmp_path / "graded.jsonl"
    started = time.perf_counter()
    assert grade_main([str(source), "--out", str(out), "--timeout", "2", "--workers", "2"]) == 0
    elapsed = time.perf_counter() - started
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert {name: rows[name]["correct"] for name, *_ in ADVERSARIAL} == {name: expected for name, _, _, expected in ADVERSARIAL}
    summary = capsys.readouterr().err
    slowest = float(summary.rsplit(" ", 2)[-2])  # "... slowest answer id=X 0.123 s"
    assert slowest < LIMIT_S, summary
    # Worker start-up (sympy imports) plus at most the limit per symbolic answer on 2 workers.
    assert elapsed < 30 + LIMIT_S * len(ADVERSARIAL) / 2, summary


def test_a_worker_stuck_in_c_code_is_killed_within_the_limit():
    # Without the worker's own timer, 10^(10^8) runs in CPython's integer power and only the
    # parent's kill ends it: that kill, and the replacement, must fit inside the limit too.
    with GradingPool(num_workers=1, timeout=LIMIT_S, soft_limit_fraction=None) as hard_pool:
        hard_pool.compare([("x+1", ["1+x"])])
        started = time.perf_counter()
        result = grade_answer(boxed("10^{10^{8}}"), "5", timeout=LIMIT_S, pool=hard_pool)
        seconds = time.perf_counter() - started
        assert result.timed_out and not result.correct and hard_pool.stats.killed_workers == 1
        assert seconds < LIMIT_S, f"{seconds:.2f} s"
        assert grade_answer(boxed("\\frac{2}{\\sqrt{2}}"), "\\sqrt{2}", pool=hard_pool).correct  # a fresh worker
