"""The long-tailed toy task (toy-arith-long), its built-in model name, and the demo's names table;
and that the demo's own task, corpus and model cache key did not move."""

import hashlib
import json
import re

import pytest

from megarl.demo.builtins import (BUILTIN_MODELS, builtin_model_dir, builtin_model_settings, is_toy_source,
                                  parse_toy_source, toy_source_rows)
from megarl.demo.toy_model import ToyModelSettings, build_toy_model, pretraining_corpus
from megarl.demo.toy_task import (CHAIN_STEPS_MAX, CHAIN_STEPS_MIN, SPLITS, chain_answer, chain_key, format_prompt,
                                  long_pretraining_examples, long_problems, pretraining_examples, split_of_chain,
                                  toy_problems, worked_solution)
from megarl.rewards.extraction import extract_answer


def test_the_demo_task_corpus_and_cache_key_are_unchanged():
    # Values computed on main before the long variant existed (commit 428371b).
    blob = json.dumps([toy_problems("rl_train", 300, 0), toy_problems("heldout", 200, 1), pretraining_examples(500, 0)])
    assert hashlib.sha256(blob.encode()).hexdigest()[:16] == "06378ce4183e9825"
    assert ToyModelSettings().cache_key() == "0bea364acd3c"
    assert pretraining_corpus(ToyModelSettings(steps=10)) == pretraining_examples(320, 0)  # batches in the same order
    assert builtin_model_settings("toy-arith") == ToyModelSettings()


def test_long_rows_are_deterministic_correct_and_a_chain_share_is_chains():
    rows = long_problems("rl_train", 600, seed=0)
    assert rows == long_problems("rl_train", 600, seed=0)
    assert rows != long_problems("rl_train", 600, seed=1)
    assert len({r["id"] for r in rows}) == 600
    chains = [r for r in rows if r["template"] == "chain"]
    assert 0.25 < len(chains) / len(rows) < 0.35
    for row in chains:
        json.dumps(row)
        ops = [tuple(op) for op in row["ops"]]
        assert CHAIN_STEPS_MIN <= len(ops) <= CHAIN_STEPS_MAX
        numbers = [int(x) for x in re.findall(r"\d+", row["problem"])]
        assert numbers == [row["a"]] + [b for _, b in ops]  # the problem states every operand, in order
        total = row["a"]
        for op, b in ops:  # by hand: running totals stay within 0..999
            total = total + b if op == "+" else total - b
            assert 0 <= total <= 999
        assert row["answer"] == str(total) == str(chain_answer(row["a"], ops))
    steps = [len(r["ops"]) for r in chains]
    assert min(steps) == CHAIN_STEPS_MIN and max(steps) >= 20  # a long tail
    assert sorted(steps)[len(steps) // 2] <= 8  # most chains are short (log-uniform)


def test_long_splits_are_disjoint_and_short_rows_are_the_demo_rows():
    for split in SPLITS:
        for row in long_problems(split, 300, seed=3):
            if row["template"] == "chain":
                assert split_of_chain(row["a"], [tuple(op) for op in row["ops"]]) == split
    key = lambda r: chain_key(r["a"], [tuple(op) for op in r["ops"]]) if r["template"] == "chain" else (r["template"], r["a"], r["b"])
    heldout = {key(r) for r in long_problems("heldout", 400, seed=1)}
    trained = {key(r) for split in ("pretrain", "rl_train") for r in long_problems(split, 3000, seed=0)}
    assert not heldout & trained
    short = [r for r in long_problems("heldout", 100, seed=1) if r["template"] != "chain"]
    demo = toy_problems("heldout", len(short), seed=1)
    assert [(r["problem"], r["answer"]) for r in short] == [(r["problem"], r["answer"]) for r in demo]
    with pytest.raises(ValueError, match="chain_fraction"):
        long_problems("heldout", 3, chain_fraction=2.0)
    assert all(r["template"] != "chain" for r in long_problems("heldout", 50, chain_fraction=0.0))


def test_chain_worked_solution_has_one_line_per_operation():
    row = {"template": "chain", "a": 23, "ops": [["+", 45], ["-", 12], ["+", 30]], "answer": "86"}
    assert worked_solution(row, boxed=True) == "Step by step: 23 + 45 = 68. 68 - 12 = 56. 56 + 30 = 86. The answer is \\boxed{86}."
    assert extract_answer(worked_solution(row, boxed=True), "boxed").text == "86"
    assert extract_answer(worked_solution(row, boxed=False), "boxed").text is None
    examples = long_pretraining_examples(400, seed=0)
    assert all(p.endswith("\n") for p, _ in examples)
    long_solutions = [s for _, s in examples if s.startswith("Step by step")]
    assert 0.25 < len(long_solutions) / len(examples) < 0.35


def test_long_corpus_batches_group_similar_lengths():
    settings = ToyModelSettings(steps=64, batch_size=8, chain_fraction=0.3)
    corpus = pretraining_corpus(settings)
    assert sorted(corpus) == sorted(long_pretraining_examples(64 * 8, 0, chain_fraction=0.3))  # the same documents
    batches = [corpus[i:i + 8] for i in range(0, len(corpus), 8)]
    # padded characters per batch: sorted by length within windows, far below a random order's
    pad = sum(max(len(p + s) for p, s in b) * len(b) - sum(len(p + s) for p, s in b) for b in batches)
    shuffled = long_pretraining_examples(64 * 8, 0, chain_fraction=0.3)
    pad_random = sum(max(len(p + s) for p, s in b) * len(b) - sum(len(p + s) for p, s in b)
                     for b in (shuffled[i:i + 8] for i in range(0, len(shuffled), 8)))
    assert pad < 0.2 * pad_random


def test_builtin_names_table():
    assert set(BUILTIN_MODELS) == {"toy-arith", "toy-arith-long", "toy-tool", "toy-arith-moe"}
    long = builtin_model_settings("toy-arith-long")
    assert long.chain_fraction > 0 and long.name == "toy-arith-long" and long.max_position_embeddings >= 640
    assert long.cache_key() != ToyModelSettings().cache_key()
    assert builtin_model_dir("toy-arith-long", build=False, cache_dir="/c").name.startswith("toy-arith-long-")
    assert builtin_model_dir("toy-arith", build=False, cache_dir="/c").name == "toy-arith-0bea364acd3c"
    with pytest.raises(ValueError, match="builtin:toy-arith-long"):
        builtin_model_settings("toy-arith-longer")
    assert parse_toy_source("toy-arith-long:heldout:200") == ("toy-arith-long", "heldout", 200)
    assert parse_toy_source("toy-arith:rl_train") == ("toy-arith", "rl_train", 1000)
    assert parse_toy_source("gsm8k_test") is None and parse_toy_source("data/x.jsonl") is None
    for bad in ("toy-arith-long:test", "toy-arith:heldout:many", "toy-arith:heldout:0"):
        assert not is_toy_source(bad)
        with pytest.raises(ValueError):
            parse_toy_source(bad)
    rows = toy_source_rows("toy-arith-long:heldout:40")
    assert rows == long_problems("heldout", 40, seed=0)


def test_load_prompts_reads_both_generated_sets():
    from megarl.data import load_prompts

    long = load_prompts("toy-arith-long:rl_train:30")
    assert [r.problem for r in long] == [format_prompt(r["problem"]) for r in long_problems("rl_train", 30, seed=0)]
    assert len(load_prompts("toy-arith:heldout:12")) == 12
    with pytest.raises(ValueError):
        load_prompts("toy-arith:test")


def test_a_tiny_long_build_is_named_for_its_task_and_holds_long_contexts(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    model_dir = build_toy_model(tmp_path, steps=3, batch_size=8, warmup_steps=1, show_progress=False,
                                chain_fraction=0.3, max_position_embeddings=768)
    assert model_dir.name.startswith("toy-arith-long-")
    assert AutoConfig.from_pretrained(model_dir).max_position_embeddings == 768
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    row = next(r for r in long_problems("heldout", 50, seed=0) if r["template"] == "chain")
    text = format_prompt(row["problem"]) + worked_solution(row, boxed=True)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
