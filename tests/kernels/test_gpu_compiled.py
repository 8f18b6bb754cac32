"""Compiled Triton kernels on a CUDA GPU against the torch references (skipped on CPU machines;
run on a GPU node with TRITON_INTERPRET unset: `TRITON_INTERPRET= pytest tests/kernels/test_gpu_compiled.py`)."""

import os

import pytest
import torch

from megarl.runtime.device import get_device, on_gpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not on_gpu() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA GPU and compiled Triton"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprob_entropy_compiled(dtype):
    from megarl.kernels.logprob import logprobs_and_entropy, logprobs_and_entropy_reference

    device = get_device()
    g = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(512, 151936, device=device, generator=g) * 3).to(dtype)
    labels = torch.randint(0, 151936, (512,), device=device, generator=g)
    lp, ent = logprobs_and_entropy(logits, labels, temperature=0.7, impl="triton")
    lp_ref, ent_ref = logprobs_and_entropy_reference(logits.float(), labels, temperature=0.7)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-4, atol=1e-4)


def test_advantages_compiled():
    from megarl.kernels.advantages import gae, gae_reference, group_advantages, group_advantages_reference

    device = get_device()
    r = torch.randn(64, 8, device=device)
    torch.testing.assert_close(group_advantages(r, impl="triton"), group_advantages_reference(r).to(device), rtol=1e-5, atol=1e-5)
    rewards, values = torch.randn(16, 300, device=device), torch.randn(16, 300, device=device)
    mask = torch.rand(16, 300, device=device) > 0.1
    for got, want in zip(gae(rewards, values, mask, 0.99, 0.95, impl="triton"), gae_reference(rewards, values, mask, 0.99, 0.95)):
        torch.testing.assert_close(got, want.to(device), rtol=1e-4, atol=1e-4)
