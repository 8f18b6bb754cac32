"""Multi-turn rollouts against the built-in server (a `megarl serve` process), the toy tool model and real
sandboxes: the model writes code, the interpreter's output goes into its context, it answers.

Token in, token out: a sample's model tokens are exactly the tokens the server generated (segment after
segment), its tool tokens exactly the tokenized interpreter output, and its behaviour log-probs one per
model token.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "rollout"))
from rollout_helpers import ServerProcess  # noqa: E402

from megarl.config import ToolConfig  # noqa: E402
from megarl.rollout import multi_turn  # noqa: E402
from megarl.rollout.client import RolloutClient, SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def model_dir():
    from megarl.demo.builtins import builtin_model_dir

    return str(builtin_model_dir("toy-tool", show_progress=False))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    proc = ServerProcess(model_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tools(tokenizer):
    runner = multi_turn.ToolRunner(ToolConfig(enabled=True, max_turns=2, timeout_s=5, workers=2), tokenizer)
    yield runner
    runner.close()


def _prompts(tokenizer, n):
    from megarl.demo.toy_tool import tool_problems

    rows = tool_problems("heldout", n)
    return rows, [tokenizer(r["problem"] + "\n", add_special_tokens=False)["input_ids"] for r in rows]


def test_samples_carry_the_servers_tokens_and_the_tools_tokens_exactly(server, tools, tokenizer):
    client = RolloutClient(server.url)
    rows, prompts = _prompts(tokenizer, 6)
    sampling = multi_turn.with_tool_stop(SamplingParams(max_new_tokens=64, temperature=1.0, stop=["<|endoftext|>"],
                                                        sampling_seed=7), tools)

    async def run():
        out = []
        async with client.connect() as conn:
            for i, prompt in enumerate(prompts):
                firsts = await client.agenerate_prompt(conn, i, prompt, sampling, 8)  # seed + i: its own draws
                for j, first in enumerate(firsts):
                    segments = [first]

                    async def send(ids, params):
                        (s,) = await client.agenerate_prompt(conn, 0, ids, params, 1)
                        segments.append(s)
                        return s
                    sample = await multi_turn.complete(send, prompt, first, tools, max_new_tokens=64,
                                                       sampling=multi_turn.continuation_sampling(sampling, 100 * i + j))
                    out.append((prompt, sample, segments))
        return out

    results = asyncio.run(run())
    called = [(p, s, segs) for p, s, segs in results if any(c.status == "ok" for c in s.tool_calls)]
    assert called, "the toy tool model wrote no code block in 48 samples at temperature 1"
    for prompt, sample, segments in called:
        mask = sample.loss_mask
        assert len(mask) == len(sample.output_ids) and 0 in mask and 1 in mask
        model = [t for t, m in zip(sample.output_ids, mask) if m]
        assert model == [t for s in segments for t in s.output_ids]  # the server's tokens, as generated
        assert len(sample.logprobs) == sum(mask) == sum(len(s.logprobs) for s in segments)
        assert sample.logprobs == [x for s in segments for x in s.logprobs]
        first_tool = mask.index(0)
        tool = sample.output_ids[first_tool:first_tool + sample.tool_calls[0].output_tokens]
        assert set(mask[first_tool:first_tool + len(tool)]) == {0}
        text = tokenizer.decode(tool)
        assert tool == tokenizer(text, add_special_tokens=False)["input_ids"]  # tokenized once, as rendered
        a_b = tokenizer.decode(segments[0].output_ids)  # the code the model wrote ran: its product is the output
        code = multi_turn.TOOL_FORMATS["torl"].extract_code(a_b)
        assert str(eval(code.strip()[len("print("):-1])) in text  # noqa: S307 - the model's own "print(a * b)"
        assert sample.turns == 2 and segments[0].matched_stop == "```output"


def test_generate_with_tools_answers_from_the_interpreter(server, tools, tokenizer):
    from megarl.rewards.grading import grade_batch

    client = RolloutClient(server.url)
    rows, prompts = _prompts(tokenizer, 8)
    sampling = SamplingParams(max_new_tokens=64, temperature=1.0, stop=["<|endoftext|>"], sampling_seed=3)
    outputs = multi_turn.generate(client, prompts, sampling, 8, tools)
    flat = [s for group in outputs for s in group]
    assert all(isinstance(s, multi_turn.TurnSample) for s in flat)
    grades = grade_batch([s.text for s in flat], [rows[s.prompt_index]["answer"] for s in flat], template="none")
    with_tool = [g.correct for s, g in zip(flat, grades) if any(c.status == "ok" for c in s.tool_calls)]
    without = [g.correct for s, g in zip(flat, grades) if not s.tool_calls]
    assert with_tool and without
    # With the interpreter's product in its context it copies it (often, at temperature 1); in its head it
    # cannot multiply 3-4 digit numbers.
    assert sum(with_tool) / len(with_tool) > 0.2 and sum(without) / len(without) < 0.05
    metrics = multi_turn.tool_metrics(flat)
    assert metrics["tool/calls_per_sample"] == pytest.approx(sum(len(s.tool_calls) for s in flat) / len(flat))
    assert metrics["tool/output_tokens"] > 0 and metrics["tool/error_rate"] == 0.0


def test_a_turn_cut_by_a_weight_update_continues_with_its_turns(server, tools, tokenizer):
    """Partial rollouts: a sample aborted mid-turn (what /pause_generation does at a weight update) keeps its
    tokens and turns and continues from them; without partial rollouts it starts again from its prompt."""
    import dataclasses

    client = RolloutClient(server.url)
    rows, prompts = _prompts(tokenizer, 6)
    sampling = multi_turn.with_tool_stop(SamplingParams(max_new_tokens=64, temperature=1.0, stop=["<|endoftext|>"],
                                                        sampling_seed=11), tools)

    async def run():
        async with client.connect() as conn:
            async def send(ids, params):
                inputs.append(list(ids))
                return (await client.agenerate_prompt(conn, 0, ids, params, 1))[0]
            for i, prompt in enumerate(prompts):
                for first in await client.agenerate_prompt(conn, i, prompt, sampling, 8):
                    if first.matched_stop == tools.stop:  # a code turn: cut it in the middle of its code
                        cut = len(first.output_ids) // 2
                        aborted = dataclasses.replace(first, output_ids=first.output_ids[:cut], logprobs=first.logprobs[:cut],
                                                      finish_reason="abort", matched_stop=None)
                        make = multi_turn.continuation_sampling(sampling, 5)
                        kept = await multi_turn.complete(send, prompt, aborted, tools, max_new_tokens=64, sampling=make)
                        first_inputs = inputs[0]
                        inputs.clear()
                        again = await multi_turn.complete(send, prompt, aborted, tools, max_new_tokens=64, sampling=make,
                                                          partial=False)
                        return prompt, aborted, kept, first_inputs, again, inputs[0]
        return None

    inputs = []

    found = asyncio.run(run())
    assert found is not None, "no code turn in 48 samples"
    prompt, aborted, kept, kept_input, again, again_input = found
    cut = len(aborted.output_ids)
    assert kept_input == prompt + aborted.output_ids and again_input == prompt  # continued / started again
    assert (kept.continued, kept.discarded_tokens, again.continued, again.discarded_tokens) == (1, 0, 0, cut)
    assert kept.output_ids[:cut] == aborted.output_ids and kept.loss_mask[:cut] == [1] * cut
    assert kept.logprobs[:cut] == aborted.logprobs and len(kept.logprobs) == sum(kept.loss_mask)
    assert len(kept.loss_mask) == len(kept.output_ids) and kept.finish_reason != "abort"
    assert len(again.logprobs) == sum(again.loss_mask) and again.finish_reason != "abort"
