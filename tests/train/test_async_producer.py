"""The asynchronous rollout producer (megarl.train.stages.produce) against real built-in servers (the
toy model, in this process, so the tests can slow their forward pass): the staleness bound under many
random schedules, prompt accounting, and partial rollouts continuous across a weight update."""

from __future__ import annotations

import os
import random
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "rollout"))
from inprocess_server import InProcessServer  # noqa: E402

from megarl.config import Config  # noqa: E402
from megarl.data import load_prompts  # noqa: E402
from megarl.data.prompt_stream import PromptStream  # noqa: E402
from megarl.rollout import fleet  # noqa: E402
from megarl.rollout.client import RolloutClient  # noqa: E402
from megarl.train.stages import generate, produce  # noqa: E402


TOKEN = "async-test-token"


def _config(toy_model, *, per_step, n, staleness, partial, max_new_tokens, dynamic_sampling=False, **sections) -> Config:
    return Config.model_validate({**sections,
        "run": {"seed": 5},
        "model": {"path": str(toy_model)},
        "algorithm": {"name": "grpo", "dynamic_sampling": dynamic_sampling},
        "rollout": {"mode": "async", "n": n, "max_staleness": staleness, "partial": partial, "max_new_tokens": max_new_tokens,
                    "temperature": 1.0},
        "data": {"train": ["toy-arith:rl_train"], "template": "none", "prompts_per_step": per_step},
    })


def _producer(cfg, urls, version=0, **state):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    setup = generate.make_setup(cfg, RolloutClient(urls), tokenizer)
    stream = PromptStream(load_prompts("toy-arith:rl_train"), cfg.run.seed)
    return produce.Producer(setup, stream, version=version, **state), stream


def _update_versions(urls, version: int) -> None:
    """A weight update as the pusher makes it, without new tensors: pause (abort), new version, continue."""
    for path, body in (("/pause_generation", {"mode": "abort"}), ("/update_weight_version", {"new_version": str(version)}),
                       ("/continue_generation", {})):
        fleet.post_to_servers(urls, path, body, token=TOKEN)


@pytest.fixture(scope="module")
def servers(toy_model):
    started = [InProcessServer(str(toy_model), max_batch_sequences=8, token=TOKEN) for _ in range(2)]
    yield started
    for server in started:
        server.stop()


def _in_flight_for(producer, seconds: float, timeout_s: float = 1.0) -> bool:
    """Wait until the producer has requests in flight, then `seconds` more (tokens are being generated);
    False if it sent nothing within `timeout_s` (its groups all finished, up to the bound)."""
    deadline = time.monotonic() + timeout_s
    while producer.requests == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    time.sleep(seconds)
    return True


def test_staleness_bound_and_prompt_accounting_under_random_schedules(toy_model, servers):
    """Random server speeds, training times and token budgets, every bound with and without partial
    rollouts: every trained token is at most max_staleness steps old; every prompt drawn is trained
    once or still pending, never both. Some updates are made to land mid-generation, so partial
    samples are exercised whatever the machine's speed."""
    urls = [s.url for s in servers]
    seen_stale = seen_partial = 0
    for schedule in range(10):
        rng = random.Random(schedule)
        staleness, partial = schedule % 3, schedule % 2 == 1  # each (bound, partial) pair at least once
        delay = rng.choice([0.0, 0.002, 0.01])
        for server in servers:
            server.forward_delay_s = delay
        _update_versions(urls, 0)
        cfg = _config(toy_model, per_step=2, n=2, staleness=staleness, partial=partial, max_new_tokens=rng.choice([8, 24]))
        producer, stream = _producer(cfg, urls)
        producer.start()
        trained: list[str] = []
        try:
            for step in range(5):
                batch = producer.take(step, timeout_s=120)
                lags = [step - v for s in batch.seqs for v in s.versions]
                assert lags and max(lags) <= staleness and min(lags) >= 0, (schedule, step, staleness, lags)
                assert batch.metrics["rollout/staleness_max"] == max(lags)
                seen_stale += max(lags) > 0
                seen_partial += batch.metrics["rollout/partial_frac"] > 0
                assert len(batch.seqs) == 2 * 2 and len(batch.prompt_ids) == 2
                trained += batch.prompt_ids
                if staleness and rng.random() < 0.5:  # the update lands while the next groups generate
                    for server in servers:
                        server.forward_delay_s = 0.01
                    _in_flight_for(producer, 0.03)
                else:
                    time.sleep(rng.uniform(0, 0.15))  # the update
                producer.before_update()
                if not partial:
                    assert producer.requests == 0  # drained before the weights change
                _update_versions(urls, step + 1)
                producer.after_update(step + 1)
                for server in servers:
                    server.forward_delay_s = delay
            state = producer.state()
        finally:
            producer.stop()
        pending = [stream.row_at(tuple(k)).id for k in state["requeue"]]
        drawn = [stream.row_at((0, p)).id for p in range(state["prompts"]["position"])]
        assert len(trained) == len(set(trained)) == 10
        assert not set(trained) & set(pending)
        assert sorted(trained + pending) == sorted(drawn), schedule
    assert seen_stale > 0 and seen_partial > 0  # the schedules did exercise stale and partial samples


def test_partial_sample_is_continuous_across_a_weight_update(toy_model, servers, tmp_path):
    """A sample cut by the update keeps its tokens, behaviour log-probs and versions and continues with
    the new weights: each segment's log-probs are the log-probs of its own policy (checked by scoring
    the tokens with both models), and its versions are 0 then 1."""
    from transformers import AutoModelForCausalLM

    from megarl.rollout.weight_sync import WeightPusher

    server = servers[0]
    url = server.url
    old = AutoModelForCausalLM.from_pretrained(str(toy_model), dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(str(toy_model), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    _update_versions([url], 0)
    deadline = time.monotonic() + 60  # requests of the last test's producer, cancelled, may still be running
    while (server.server.scheduler.running_batch or server.server.scheduler.queued) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.forward_delay_s = 0.05
    cfg = _config(toy_model, per_step=1, n=2, staleness=2, partial=True, max_new_tokens=40)
    producer, _ = _producer(cfg, [url])
    calls = server.forward_calls
    producer.start()
    pusher = WeightPusher([url], token=TOKEN)
    try:
        deadline = time.monotonic() + 60
        while server.forward_calls < calls + 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        producer.before_update()
        pusher.push(list(new.named_parameters()), weight_version="1")
        producer.after_update(1)
        server.forward_delay_s = 0.0
        # groups queued or admitted after the update may finish first: the cut group is in one of the next batches
        batches = []
        while len(batches) < 6 and not any(s.versions[0] == 0 for b in batches for s in b.seqs):
            batches.append(producer.take(1, timeout_s=120))
    finally:
        producer.stop()
        pusher.close()
        # the servers are shared with the other tests: back to the original weights
        WeightPusher([url], token=TOKEN).push(list(old.named_parameters()), weight_version="0")
    seqs = [s for b in batches for s in b.seqs]
    split = [s for s in seqs if s.versions and s.versions[0] == 0 and s.versions[-1] == 1]
    assert split, [s.versions for s in seqs]
    assert max(b.metrics["rollout/partial_frac"] for b in batches) > 0
    for seq in split:
        cut = seq.versions.index(1)
        assert seq.versions == [0] * cut + [1] * (len(seq.response_ids) - cut)
        assert len(seq.behaviour_logp) == len(seq.response_ids)
        ids = torch.tensor([seq.prompt_ids + seq.response_ids])
        start = len(seq.prompt_ids)
        for model, lo, hi in ((old, 0, cut), (new, cut, len(seq.response_ids))):
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            want = [logp[start + t - 1, seq.response_ids[t]].item() for t in range(lo, hi)]
            assert seq.behaviour_logp[lo:hi] == pytest.approx(want, abs=2e-4), (lo, hi)


def test_dynamic_sampling_that_cannot_fill_a_batch_fails_with_the_fix_named(toy_model, servers):
    sys.path.insert(0, os.path.dirname(__file__))
    cfg = _config(toy_model, per_step=2, n=2, staleness=1, partial=True, max_new_tokens=8, dynamic_sampling=True,
                  reward={"custom": "toy_rewards:always_zero"})
    producer, _ = _producer(cfg, [s.url for s in servers])
    producer.start()
    try:
        with pytest.raises(RuntimeError, match="dynamic_sampling_max_rounds"):
            producer.take(0, timeout_s=120)
    finally:
        producer.stop()
