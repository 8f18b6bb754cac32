"""Vocabulary-parallel log-prob/entropy: TP=2 over gloo equals TP=1, forward and gradients."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megarl.kernels.linear_logprob import linear_logprobs_and_entropy, linear_logprobs_and_entropy_reference
from megarl.kernels.logprob import logprobs_and_entropy, logprobs_and_entropy_reference

TP = 2
N, H, LOCAL_V, TRUE_V = 13, 16, 600, 1150  # 2 x 600 = 1200 columns, Megatron-style padding past 1150


def _inputs():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(N, TP * LOCAL_V, generator=g) * 2
    hidden = torch.randn(N, H, generator=g)
    weight = torch.randn(TP * LOCAL_V, H, generator=g) * 0.3
    labels = torch.randint(0, TRUE_V, (N,), generator=g)
    w_lp, w_h = torch.randn(N, generator=g), torch.randn(N, generator=g)
    return logits, hidden, weight, labels, w_lp, w_h


def _worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=TP)
    try:
        group = dist.new_group(list(range(TP)))
        logits, hidden, weight, labels, w_lp, w_h = _inputs()
        cols = slice(rank * LOCAL_V, (rank + 1) * LOCAL_V)

        # full-vocabulary oracle on every rank
        x_ref = logits.clone().requires_grad_()
        lp_ref, ent_ref = logprobs_and_entropy_reference(x_ref, labels, 0.8, vocab_size=TRUE_V)
        ((lp_ref * w_lp).sum() + (ent_ref * w_h).sum()).backward()
        h_ref, wt_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        llp_ref, lent_ref = linear_logprobs_and_entropy_reference(h_ref, wt_ref, labels, 0.8, vocab_size=TRUE_V)
        ((llp_ref * w_lp).sum() + (lent_ref * w_h).sum()).backward()

        for impl in ("triton", "torch"):
            shard = logits[:, cols].clone().requires_grad_()
            lp, ent = logprobs_and_entropy(shard, labels, 0.8, tp_group=group, impl=impl, vocab_size=TRUE_V)
            ((lp * w_lp).sum() + (ent * w_h).sum()).backward()
            torch.testing.assert_close(lp, lp_ref.detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ent, ent_ref.detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(shard.grad, x_ref.grad[:, cols], rtol=1e-5, atol=1e-5)

            h = hidden.clone().requires_grad_()
            w_shard = weight[cols].clone().requires_grad_()
            llp, lent = linear_logprobs_and_entropy(h, w_shard, labels, 0.8, tp_group=group, impl=impl,
                                                    vocab_size=TRUE_V, vocab_chunk=256, token_chunk=5)
            ((llp * w_lp).sum() + (lent * w_h).sum()).backward()
            torch.testing.assert_close(llp, llp_ref.detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lent, lent_ref.detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(w_shard.grad, wt_ref.grad[cols], rtol=1e-5, atol=1e-5)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_tp2_over_gloo_equals_tp1():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # the spawned ranks inherit it and run Triton interpreted
    mp.spawn(_worker, args=(_free_port(),), nprocs=TP, join=True)
