"""A model whose context is shorter than prompt + the protocol's 16000 tokens still generates under
`simplerl-zoo` (new tokens capped at the context left, as vLLM), a benchmark whose requests failed is
an error (not 0%), and the named protocols encode prompts with BOS as vLLM does."""

from __future__ import annotations

import json
import os
import sys

import pytest

from megarl.config import EvalConfig, RewardConfig
from megarl.evaluation.harness import EvalSettings, EvaluationFailed, evaluate_benchmarks
from megarl.rollout.client import RolloutClient

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "rollout"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from inprocess_server import InProcessServer  # noqa: E402
from tiny_tokenizer import build_tiny_tokenizer  # noqa: E402

NEW_TOKENS_LEFT = 24  # the context left after the longest prompt (a short generation keeps the test fast)


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    from tokenizers import processors

    from tiny_models import make_tiny_hf

    from megarl.data import get_template, render_prompt

    tokenizer = build_tiny_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # A Llama-style tokenizer: its post-processor puts a BOS before every text (add_special_tokens=True).
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    tokenizer.bos_token = "<|endoftext|>"
    longest = max(len(tokenizer(render_prompt(get_template("qwen-boxed"), f"What is 1 + {i}?"))["input_ids"]) for i in range(2))
    context = longest + NEW_TOKENS_LEFT
    path = make_tiny_hf("qwen2", tmp_path_factory.mktemp("short_ctx"), max_position_embeddings=context)
    tokenizer.save_pretrained(path)
    bench = tmp_path_factory.mktemp("bench") / "two.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is 1 + {i}?", "answer": str(1 + i)}) + "\n" for i in range(2)))
    server = InProcessServer(str(path))
    yield path, bench, server, context
    server.stop()


def _settings(bench, protocol: str) -> EvalSettings:
    return EvalSettings(eval=EvalConfig(benchmarks=[str(bench)], protocol=protocol, max_new_tokens=16000), reward=RewardConfig(),
                        template="qwen-boxed", seed=0, stop_token_ids=[], template_stops=True, baseline=False)


def test_simplerl_zoo_on_a_short_context_model_generates(short_context_model, tmp_path):
    from transformers import AutoTokenizer

    path, bench, server, context = short_context_model
    tokenizer = AutoTokenizer.from_pretrained(path)
    client = RolloutClient([server.url], context_length=context)
    results = evaluate_benchmarks(client, tokenizer, _settings(bench, "simplerl-zoo"), out_dir=tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert results[str(bench)]["samples"] == 2 and len(rows) == 2
    from megarl.data import get_template, render_prompt

    for row in rows:
        prompt = render_prompt(get_template("qwen-boxed"), f"What is 1 + {row['id'][1:]}?")
        with_bos = tokenizer(prompt)["input_ids"]
        assert with_bos[0] == tokenizer.bos_token_id and len(with_bos) == len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1
        assert row["prompt_tokens"] == len(with_bos)  # BOS added, as vLLM with a text prompt
        assert 0 < row["completion_tokens"] <= context - row["prompt_tokens"]  # generated, up to the context left
    assert set(json.loads((tmp_path / "averages.json").read_text())) == {"average (paper: one run per benchmark)", "average (all samples: avg@n)"}


def test_failed_requests_are_an_error_not_zero(short_context_model):
    from transformers import AutoTokenizer

    path, bench, server, context = short_context_model
    uncapped = RolloutClient([server.url])  # no context length: 16000 new tokens are asked for and rejected
    with pytest.raises(EvaluationFailed, match=r"2 of 2 prompts failed .*no score is reported.*maximum context length"):
        evaluate_benchmarks(uncapped, AutoTokenizer.from_pretrained(path), _settings(bench, "simplerl-zoo"), progress=False)


def test_baseline_adds_a_greedy_single_run(short_context_model):
    """A base model under simplerl-zoo: the paper's one-run score is a separate greedy run, graded apart
    from the T=1 samples (same seed and prompt: the greedy run is the same on a rerun)."""
    from transformers import AutoTokenizer

    path, bench, server, context = short_context_model
    tokenizer = AutoTokenizer.from_pretrained(path)
    settings = _settings(bench, "simplerl-zoo")
    settings.eval = settings.eval.model_copy(update={"limit": 1})
    settings.baseline = True
    client = RolloutClient([server.url], context_length=context)
    calls = server.forward_calls
    row = evaluate_benchmarks(client, tokenizer, settings, progress=False)[str(bench)]
    assert row["samples"] == 1 and 0.0 <= row["single_run"] <= 1.0
    assert server.forward_calls > calls + 1  # two generations (sampled, greedy), each at least a prefill and a step
