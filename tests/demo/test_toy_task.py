"""The CPU demo's toy arithmetic task: deterministic rows, disjoint splits, worked solutions."""

import json
import re

import pytest

from megarl.demo.toy_task import (
    SPLITS,
    TEMPLATE_BY_KEY,
    format_prompt,
    pretraining_examples,
    split_keys,
    split_of,
    toy_problems,
    worked_solution,
)
from megarl.rewards.extraction import extract_answer


def test_generator_is_deterministic_and_seed_dependent():
    assert toy_problems("rl_train", 50, seed=3) == toy_problems("rl_train", 50, seed=3)
    assert toy_problems("rl_train", 50, seed=3) != toy_problems("rl_train", 50, seed=4)
    assert pretraining_examples(20, seed=1) == pretraining_examples(20, seed=1)


def test_rows_have_the_dataset_schema_and_correct_answers():
    rows = toy_problems("heldout", 200, seed=0)
    assert len(rows) == 200
    assert len({row["id"] for row in rows}) == 200
    for row in rows:
        json.dumps(row)  # JSON Lines-ready
        assert isinstance(row["problem"], str) and isinstance(row["answer"], str)
        numbers = [int(x) for x in re.findall(r"\d+", row["problem"])]
        assert numbers == [row["a"], row["b"]], row["problem"]
        expected = row["a"] + row["b"] if TEMPLATE_BY_KEY[row["template"]].operation == "+" else row["a"] - row["b"]
        assert row["answer"] == str(expected)
        assert int(row["answer"]) > 0


def test_splits_are_disjoint_by_template_and_operands():
    keys = {split: set(split_keys(split)) for split in SPLITS}
    assert not keys["heldout"] & keys["pretrain"]
    assert not keys["heldout"] & keys["rl_train"]
    assert not keys["rl_train"] & keys["pretrain"]
    assert all(len(keys[split]) > 1000 for split in SPLITS)
    # and the rows each split generates come only from its own keys
    for split in SPLITS:
        for row in toy_problems(split, 300, seed=7):
            assert split_of(row["template"], row["a"], row["b"]) == split
    heldout_problems = {(r["template"], r["a"], r["b"]) for r in toy_problems("heldout", 500, seed=1)}
    trained = {(r["template"], r["a"], r["b"]) for split in ("pretrain", "rl_train") for r in toy_problems(split, 5000, seed=0)}
    assert not heldout_problems & trained
    assert len(heldout_problems) == 500  # distinct underlying problems within one call


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="heldout"):
        toy_problems("test", 5)


def test_worked_solution_boxes_on_request_and_the_strict_grader_sees_it():
    row = toy_problems("pretrain", 1, seed=0)[0]
    boxed, plain = worked_solution(row, boxed=True), worked_solution(row, boxed=False)
    assert boxed.endswith(f"\\boxed{{{row['answer']}}}.")
    assert extract_answer(boxed, "boxed").text == row["answer"]
    assert extract_answer(plain, "boxed").text is None
    assert extract_answer(plain, "answer_is").text == row["answer"]
    assert format_prompt(row["problem"]) == row["problem"] + "\n"


def test_pretraining_corpus_boxes_a_minority():
    examples = pretraining_examples(2000, seed=0, boxed_fraction=0.3)
    share = sum("\\boxed{" in solution for _, solution in examples) / len(examples)
    assert 0.26 < share < 0.34
    with pytest.raises(ValueError, match="boxed_fraction"):
        pretraining_examples(3, boxed_fraction=1.5)
