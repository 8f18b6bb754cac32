"""Weight sync transports against two real built-in servers: tensor (shared memory), distributed (gloo), disk."""

from __future__ import annotations

import pytest
import torch
from rollout_helpers import SERVER_TOKEN, http_json

from megarl.rollout.weight_buckets import pack_into, unpack
from megarl.rollout.weight_sync import WeightPusher, WeightSyncError, iter_buckets, push_weights

SEQUENCES = [[5, 17, 200, 33, 90, 1, 7, 250], [300, 12, 44, 3, 3, 9]]
BF16_NAMES = ("model.layers.1.mlp.down_proj.weight", "model.norm.weight")  # sent as bfloat16


def server_logprobs(url: str, seq: list[int]) -> tuple[torch.Tensor, str]:
    status, out = http_json(url + "/generate", {"input_ids": seq, "return_logprob": True, "logprob_start_len": 0,
                                                 "sampling_params": {"max_new_tokens": 0}})
    assert status == 200, out
    return torch.tensor([e[0] for e in out["meta_info"]["input_token_logprobs"][1:]]), out["meta_info"]["weight_version"]


def reference_logprobs(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, :-1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq[1:]).unsqueeze(-1)).squeeze(-1)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def perturbed_weights(model, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Perturb `model` in place and return its HF-named weights (two of them as bfloat16)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
            if name in BF16_NAMES:  # make the fp32 reference equal what a bf16 push delivers
                param.copy_(param.to(torch.bfloat16).float())
    return [(n, t.to(torch.bfloat16) if n in BF16_NAMES else t) for n, t in model.state_dict().items()]


@pytest.mark.parametrize("transport", ["tensor", "distributed", "disk"])
def test_push_makes_servers_match_the_new_weights(two_servers, model, transport, tmp_path):
    urls = [s.url for s in two_servers]
    before = [server_logprobs(u, SEQUENCES[0])[0] for u in urls]
    version = f"{transport}-1"
    named = perturbed_weights(model, seed=hash(transport) % 1000)
    report = push_weights(named, urls, transport=transport, bucket_bytes=64 << 10, weight_version=version,
                          token=SERVER_TOKEN, disk_dir=str(tmp_path))
    assert report.num_tensors == len(named) and report.num_buckets >= 4
    assert report.total_bytes == sum(t.numel() * t.element_size() for _, t in named)
    for url, old in zip(urls, before):
        for seq in SEQUENCES:
            got, got_version = server_logprobs(url, seq)
            assert got_version == version
            assert torch.allclose(got, reference_logprobs(model, seq), atol=1e-4, rtol=0)
        assert not torch.allclose(old, server_logprobs(url, SEQUENCES[0])[0], atol=1e-3)  # the weights did change
        assert http_json(url + "/model_info")[1]["weight_version"] == version


def test_pusher_reuses_its_group_and_fresh_buffers(two_servers, model):
    urls = [s.url for s in two_servers]
    with WeightPusher(urls, transport="distributed", bucket_bytes=1 << 20, token=SERVER_TOKEN) as pusher:
        for step in range(2):
            named = perturbed_weights(model, seed=100 + step)
            pusher.push(named, weight_version=f"step-{step}")
            group = pusher.group
            for url in urls:
                got, version = server_logprobs(url, SEQUENCES[1])
                assert version == f"step-{step}"
                assert torch.allclose(got, reference_logprobs(model, SEQUENCES[1]), atol=1e-4, rtol=0)
        assert pusher.group is group  # one group for both pushes
    for step in range(2):  # two tensor pushes in a row: the second must not see the first's buffers
        named = perturbed_weights(model, seed=200 + step)
        push_weights(named, urls, transport="tensor", bucket_bytes=32 << 10, weight_version=f"t{step}", token=SERVER_TOKEN)
    for url in urls:
        assert torch.allclose(server_logprobs(url, SEQUENCES[0])[0], reference_logprobs(model, SEQUENCES[0]), atol=1e-4, rtol=0)


def test_bad_updates_are_refused_and_change_nothing(two_servers, model, tmp_path):
    urls = [s.url for s in two_servers]
    before = server_logprobs(urls[0], SEQUENCES[0])
    bad = [("model.layers.0.mlp.up_proj.weight", torch.zeros(128, 64)), ("model.layers.0.self_attn.q_prj.weight", torch.zeros(64, 64))]
    for transport in ("tensor", "disk"):
        with pytest.raises(WeightSyncError, match="unknown parameter 'model.layers.0.self_attn.q_prj.weight'"):
            push_weights(bad, urls, transport=transport, bucket_bytes=1 << 20, weight_version="bad", token=SERVER_TOKEN,
                         disk_dir=str(tmp_path))
    with pytest.raises(WeightSyncError, match=r"shape \(3, 3\)"):
        push_weights([("lm_head.weight", torch.zeros(3, 3))], urls, transport="tensor", token=SERVER_TOKEN)
    after = server_logprobs(urls[0], SEQUENCES[0])
    assert after[1] == before[1] and torch.equal(after[0], before[0])
    assert http_json(urls[0] + "/server_info")[1]["paused"] is False  # resumed after the failure
    with pytest.raises(WeightSyncError, match="HTTP 401"):
        push_weights(bad[:1], urls, transport="tensor", token="wrong-token")
    with pytest.raises(ValueError, match="token"):
        push_weights(bad[:1], urls, transport="tensor")


def test_buckets_are_bounded_and_single_dtype():
    tensors = [("a", torch.zeros(100)), ("b", torch.zeros(100, dtype=torch.bfloat16)), ("c", torch.zeros(100)),
               ("big", torch.zeros(1000)), ("d", torch.zeros(10, dtype=torch.bfloat16)), ("e", torch.zeros(20))]
    buckets = list(iter_buckets(tensors, bucket_bytes=800))
    assert sorted(n for b in buckets for n, _ in b) == sorted(n for n, _ in tensors)
    for bucket in buckets:
        assert len({t.dtype for _, t in bucket}) == 1
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= 800 or len(bucket) == 1
    assert ["big"] in [[n for n, _ in b] for b in buckets]
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets(tensors, 0))


def test_flattened_bucket_round_trip():
    named = [("x", torch.randn(3, 4)), ("y", torch.arange(7, dtype=torch.float32)), ("z", torch.randn(2, 2, 2))]
    buffer = torch.empty(sum(t.numel() * 4 for _, t in named), dtype=torch.uint8)
    metadata = pack_into(buffer, named)
    assert [m.numel for m in metadata] == [48, 28, 32] and metadata[-1].end_idx == buffer.numel()
    for (name, original), (got_name, got) in zip(named, unpack(buffer, metadata)):
        assert name == got_name and torch.equal(original, got)
    with pytest.raises(ValueError, match="need 108"):
        pack_into(torch.empty(10, dtype=torch.uint8), named)


def test_bucket_pool_reuses_touched_buffers_and_bounds_memory():
    from megarl.rollout.weight_sync import BucketPool

    pool = BucketPool(shared=True, min_bytes=1024, max_buffers=2)
    a = pool.acquire(600)
    b = pool.acquire(1000)
    assert a.numel() == 600 and b.numel() == 1000 and pool.allocations == 2
    assert a.untyped_storage().is_shared()  # shared memory: a server process can map it
    pool.release(a)
    c = pool.acquire(900)  # reuses a's buffer (1024 bytes), no new allocation
    assert pool.allocations == 2 and c.data_ptr() == a.data_ptr()
    pool.release(b)
    pool.release(c)
    big = pool.acquire(4096)  # a tensor larger than the bucket: the smallest free buffer is replaced
    assert big.numel() == 4096 and pool.allocations == 3
    pool.release(big)
    assert len(pool.free) <= 2 and pool.held_bytes == 1024 + 4096
    with pytest.raises(ValueError, match="did not lend"):
        pool.release(big)
    private = BucketPool(shared=False, min_bytes=64)
    assert not private.acquire(10).untyped_storage().is_shared()
