"""Data sources, benchmarks and templates are refused when the recipe loads: one line, a
did-you-mean, within 5 s of `megarl train`, before any model, server or rank starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from megarl.config import ConfigError, load_config

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_cpu.yaml")


@pytest.mark.parametrize("override, expected", [
    ("eval.benchmarks=[math5000]", "eval.benchmarks: 'math5000' is not a known data set and no file or folder of that name exists; did you mean 'math500'?"),
    ("data.train=/x.jsonl", "data.train: a list is expected, not the single value '/x.jsonl'; write [/x.jsonl] (also, /x.jsonl does not exist)"),
    ("data.template=qwen_boxed", "data.template: 'qwen_boxed' is not a prompt template; did you mean 'qwen-boxed'?"),
])
def test_megarl_train_refuses_within_5_s(tmp_path, override, expected):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "megarl.cli", "train", RECIPE, override, f"run.output_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=60, env=env)
    elapsed = time.perf_counter() - started
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and expected in run.stderr, run.stderr
    assert elapsed < 5.0, elapsed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, expected", [
    ("data.train=[toy-arth:rl_train]", "did you mean 'toy-arith:rl_train'?"),
    ("data.train=[toy-arith:heldot]", "with SPLIT one of pretrain, rl_train, heldout"),
    ("data.train=[mediun]", "did you mean 'medium'?"),
    ("data.eval_sets=[aime42]", "data.eval_sets: 'aime42' is not a known data set"),
    ("eval.benchmarks=[hard]", "'hard' is a training preset, not a benchmark"),
    ("eval.benchmarks=[/no/such.jsonl]", "eval.benchmarks[0]='/no/such.jsonl' does not exist"),
])
def test_sources_are_checked_when_the_recipe_loads(override, expected):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(RECIPE, [override])
    assert expected in str(err.value), str(err.value)


@pytest.mark.parametrize("override", ["data.train=[math500, gsm8k]", "eval.benchmarks=[toy-arith:heldout:50, aime24]",
                                      "data.train=[hf://owner/name]", "data.train=[hard]", "data.template=r1"])
def test_known_sources_and_templates_load(override):
    load_config(RECIPE, [override], check_files=False)
