"""Fused linear log-prob + entropy (chunked over vocab and tokens) against full logits + log_softmax."""

import pytest
import torch

from megarl.kernels.linear_logprob import linear_logprobs_and_entropy, linear_logprobs_and_entropy_reference


def _case(n, h, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, labels, torch.randn(n, generator=g), torch.randn(n, generator=g)


def _run(fn, hidden, weight, labels, w_lp, w_h, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, ent = fn(h, w, labels, **kw)
    ((lp * w_lp).sum() + (ent * w_h).sum()).backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("vocab_chunk,token_chunk", [(300, None), (1000, 7), (4096, None)])
def test_fp32_matches_reference(impl, vocab_chunk, token_chunk):
    hidden, weight, labels, w_lp, w_h = _case(21, 32, 1001, torch.float32)
    out = _run(linear_logprobs_and_entropy, hidden, weight, labels, w_lp, w_h, temperature=0.7, impl=impl,
               vocab_chunk=vocab_chunk, token_chunk=token_chunk)
    ref = _run(linear_logprobs_and_entropy_reference, hidden, weight, labels, w_lp, w_h, temperature=0.7)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_bf16_and_padded_vocab(impl):
    """bf16: chunk logits are bf16 like the naive bf16 output layer; grads within 2e-2 relative of the fp32 math."""
    hidden, weight, labels, w_lp, w_h = _case(17, 32, 900, torch.bfloat16, seed=1)
    labels = labels.clamp(max=849)
    out = _run(linear_logprobs_and_entropy, hidden, weight, labels, w_lp, w_h, impl=impl, vocab_size=850, vocab_chunk=256)
    ref = _run(linear_logprobs_and_entropy_reference, hidden, weight, labels, w_lp, w_h, vocab_size=850)
    assert out[2].dtype == out[3].dtype == torch.bfloat16
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)  # same bf16 logits, float32 statistics
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2].float(), ref[2].float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out[3].float(), ref[3].float(), rtol=2e-2, atol=2e-2)
    assert out[3][850:].abs().max() == 0


def test_gradcheck_float64():
    hidden, weight, labels, _, _ = _case(5, 3, 13, torch.float64, seed=2)
    hidden.requires_grad_()
    weight.requires_grad_()

    def fused(h, w):
        return linear_logprobs_and_entropy(h, w, labels, 1.3, impl="torch", vocab_chunk=4, token_chunk=2)

    assert torch.autograd.gradcheck(fused, (hidden, weight))
    assert torch.autograd.gradcheck(lambda h, w: linear_logprobs_and_entropy_reference(h, w, labels, 1.3), (hidden, weight))


def test_only_hidden_needs_grad_and_bad_shapes():
    hidden, weight, labels, w_lp, _ = _case(6, 8, 50, torch.float32, seed=3)
    h = hidden.clone().requires_grad_()
    lp, _ = linear_logprobs_and_entropy(h, weight, labels, impl="torch", vocab_chunk=16)
    (lp * w_lp).sum().backward()
    h_ref = hidden.clone().requires_grad_()
    lp_ref, _ = linear_logprobs_and_entropy_reference(h_ref, weight, labels)
    (lp_ref * w_lp).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight"):
        linear_logprobs_and_entropy(hidden, weight.t(), labels)
    with pytest.raises(TypeError, match="share one floating dtype"):
        linear_logprobs_and_entropy(hidden, weight.double(), labels)
