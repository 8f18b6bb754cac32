"""RolloutClient against two real built-in servers: order, n, failover when a server dies or hangs."""

from __future__ import annotations

import asyncio
import time

import pytest
from rollout_helpers import SERVER_TOKEN, ServerProcess, http_json

from megarl.rollout.client import RolloutClient, RolloutError, SamplingParams, WeightVersionMismatch

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
PROMPTS = [[(7 * i + k) % 500 + 1 for k in range(3 + i % 4)] for i in range(16)]


@pytest.fixture(scope="module")
def reference(two_servers):
    """Greedy outputs per prompt from one server alone (greedy is deterministic)."""
    client = RolloutClient([two_servers[0].url])
    return [s[0].output_ids for s in client.generate(PROMPTS, GREEDY, n=1)]


def test_generate_keeps_order_and_n(two_servers, reference):
    client = RolloutClient([s.url for s in two_servers], max_concurrency=4)
    out = client.generate(PROMPTS, GREEDY, n=2)
    assert len(out) == len(PROMPTS)
    for i, samples in enumerate(out):
        assert [s.sample_index for s in samples] == [0, 1] and all(s.prompt_index == i for s in samples)
        assert all(s.output_ids == reference[i] for s in samples)
        assert all(len(s.logprobs) == len(s.output_ids) == s.completion_tokens == 6 for s in samples)
        assert all(s.finish_reason == "length" and s.weight_version == "default" for s in samples)
        assert all(s.prompt_tokens == len(PROMPTS[i]) for s in samples)
    assert {s.server for samples in out for s in samples} == {s.url for s in two_servers}  # both served
    sampled = client.generate(PROMPTS[:3], SamplingParams(max_new_tokens=5, stop=["\n"], top_p=0.9), n=3)
    assert [len(x) for x in sampled] == [3, 3, 3]
    assert client.check_health() == {s.url: True for s in two_servers}
    assert set(client.weight_versions().values()) == {"default"}


def test_hung_server_times_out_and_its_prompts_go_elsewhere(two_servers, reference):
    slow = two_servers[1]
    assert http_json(slow.url + "/pause_generation", {"mode": "in_place"}, token=SERVER_TOKEN)[0] == 200
    try:
        client = RolloutClient([s.url for s in two_servers], request_timeout_s=3.0, backoff_s=0.05)
        out = client.generate(PROMPTS, GREEDY, n=1)
        assert [s[0].output_ids for s in out] == reference
        assert all(s[0].server == two_servers[0].url for s in out)
        assert client.resends >= 1
    finally:
        http_json(slow.url + "/continue_generation", {}, token=SERVER_TOKEN)


def test_weight_version_check(two_servers):
    client = RolloutClient([s.url for s in two_servers], expected_weight_version="v999", max_retries=2, backoff_s=0.01)
    with pytest.raises(WeightVersionMismatch, match="v999"):
        client.generate(PROMPTS[:2], GREEDY)
    ok = RolloutClient([s.url for s in two_servers], expected_weight_version="default")
    assert len(ok.generate(PROMPTS[:2], GREEDY)) == 2


def test_bad_request_is_not_retried(two_servers):
    client = RolloutClient([s.url for s in two_servers])
    with pytest.raises(RolloutError, match="outside the vocabulary"):
        client.generate([[1, 2], [100000]], GREEDY)
    assert client.resends == 0


def test_server_killed_mid_batch(tiny_model_dir, two_servers, reference):
    victim = ServerProcess(tiny_model_dir)
    survivor = two_servers[0]
    try:
        # Hold the victim's requests in its queue, so it surely has prompts in flight when killed.
        assert http_json(victim.url + "/pause_generation", {"mode": "in_place"}, token=SERVER_TOKEN)[0] == 200
        client = RolloutClient([victim.url, survivor.url], max_concurrency=8, backoff_s=0.05)

        async def run():
            task = asyncio.create_task(client.agenerate(PROMPTS, GREEDY, n=2))
            deadline = time.monotonic() + 30
            while http_json(victim.url + "/server_info")[1]["queued_requests"] < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            victim.proc.kill()
            return await task

        out = asyncio.run(run())
        assert len(out) == len(PROMPTS)
        for i, samples in enumerate(out):  # every prompt answered exactly once, in order, with n samples
            assert len(samples) == 2 and all(s.prompt_index == i for s in samples)
            assert all(s.output_ids == reference[i] and s.server == survivor.url for s in samples)
        assert client.resends >= 2
        assert client.check_health() == {victim.url: False, survivor.url: True}
    finally:
        victim.stop()
