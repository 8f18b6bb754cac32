"""RolloutClient when one request is bad: it fails alone, and no healthy server is marked dead."""

from __future__ import annotations

import pytest
from inprocess_server import InProcessServer

from megarl.rollout.client import RequestRejected, RolloutClient, RolloutError, SamplingParams

GREEDY = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)
POISON = 499
GOOD = [[5 + i, 40, 41] for i in range(6)]


@pytest.fixture(scope="module")
def poisoned_pair(tiny_model_dir):
    """Two real servers whose forward pass raises (HTTP 500) for any prompt holding token POISON."""
    servers = [InProcessServer(tiny_model_dir), InProcessServer(tiny_model_dir)]
    for server in servers:
        server.poison_token = POISON
    yield servers
    for server in servers:
        server.stop()


def test_one_http_500_marks_no_server_dead(poisoned_pair):
    client = RolloutClient([s.url for s in poisoned_pair], backoff_s=0.01)
    prompts = GOOD[:3] + [[5, POISON, 6]] + GOOD[3:]
    with pytest.raises(RolloutError, match="HTTP 500.*poisoned batch") as caught:
        client.generate(prompts, GREEDY)
    assert "prompt 3 failed" in str(caught.value)
    assert [s.alive for s in client.servers] == [True, True]  # the request was bad, not the servers
    partial = caught.value.partial_results
    assert partial[3] is None and all(partial[i] is not None and len(partial[i][0].output_ids) == 3 for i in (0, 1, 2, 4, 5, 6))
    assert len(client.generate(GOOD, GREEDY)) == len(GOOD)  # both servers still serve


def test_repeated_5xx_from_one_server_marks_only_it_dead(tiny_model_dir, poisoned_pair):
    broken = InProcessServer(tiny_model_dir)
    broken.poison_token = 40  # every GOOD prompt holds token 40: this server answers 500 to all of them
    try:
        healthy = poisoned_pair[0]
        client = RolloutClient([broken.url, healthy.url], backoff_s=0.01, max_concurrency=1, dead_after_errors=3)
        out = client.generate(GOOD * 5, GREEDY)
        assert all(samples[0].server == healthy.url for samples in out)
        assert [s.alive for s in client.servers] == [False, True]
        assert client.servers[0].failures == 3  # dead after three requests in a row failed there, not one
    finally:
        broken.stop()


def test_4xx_fails_that_prompt_alone_with_the_servers_message(poisoned_pair):
    client = RolloutClient([s.url for s in poisoned_pair], backoff_s=0.01)
    prompts = GOOD[:2] + [[5, 100000]] + GOOD[2:]
    with pytest.raises(RequestRejected, match="HTTP 400: input_ids contain token ids \\[100000\\] outside the vocabulary") as caught:
        client.generate(prompts, GREEDY)
    assert client.resends == 0 and [s.alive for s in client.servers] == [True, True]
    partial = caught.value.partial_results
    assert partial[2] is None and all(partial[i] is not None for i in (0, 1, 3, 4, 5, 6))
