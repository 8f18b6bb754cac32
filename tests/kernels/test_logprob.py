"""Fused log-prob + entropy (Triton under the interpreter, chunked torch) against log_softmax + gather."""

import pytest
import torch

from megarl.kernels.logprob import logprobs_and_entropy, logprobs_and_entropy_reference

IMPLS = ["triton", "torch"]


def _run(fn, logits, labels, w_lp, w_h, **kw):
    x = logits.detach().clone().requires_grad_()
    logp, ent = fn(x, labels, **kw)
    ((logp * w_lp).sum() + (ent * w_h).sum()).backward()
    return logp.detach(), ent.detach(), x.grad


def _case(shape, vocab, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g) * scale).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=g)
    return logits, labels, torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape,vocab", [((37,), 3001), ((3, 5), 2048), ((2,), 17)])
def test_fp32_matches_reference(impl, temperature, shape, vocab):
    logits, labels, w_lp, w_h = _case(shape, vocab, torch.float32)
    lp, ent, grad = _run(logprobs_and_entropy, logits, labels, w_lp, w_h, temperature=temperature, impl=impl, chunk_elems=4096)
    lp_ref, ent_ref, grad_ref = _run(logprobs_and_entropy_reference, logits, labels, w_lp, w_h, temperature=temperature)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == labels.shape
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_fp32_math(impl, dtype):
    """Outputs are float32 math on the half inputs (1e-5); gradients within one half-precision ulp (rtol 1e-2)."""
    logits, labels, w_lp, w_h = _case((29,), 2500, dtype, seed=1)
    lp, ent, grad = _run(logprobs_and_entropy, logits, labels, w_lp, w_h, temperature=0.9, impl=impl)
    assert grad.dtype == dtype
    lp_ref, ent_ref, grad_ref = _run(logprobs_and_entropy_reference, logits.float(), labels, w_lp, w_h, temperature=0.9)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), grad_ref, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_single_output_gradients_and_inplace(impl):
    logits, labels, w_lp, w_h = _case((19,), 1500, torch.float32, seed=2)
    for w1, w2 in ((w_lp, 0 * w_h), (0 * w_lp, w_h)):
        x = logits.clone().requires_grad_()
        lp, ent = logprobs_and_entropy(x, labels, impl=impl)
        ((lp * w1).sum() if w2.abs().sum() == 0 else (ent * w2).sum()).backward()  # the other output gets no grad
        _, _, grad_ref = _run(logprobs_and_entropy_reference, logits, labels, w1, w2)
        torch.testing.assert_close(x.grad, grad_ref, rtol=1e-5, atol=1e-5)
    # in-place: the gradient is written into the logits buffer itself
    leaf = logits.clone().requires_grad_()
    x = leaf * 1.0
    lp, ent = logprobs_and_entropy(x, labels, temperature=1.3, impl=impl, inplace_backward=True)
    ((lp * w_lp).sum() + (ent * w_h).sum()).backward()
    _, _, grad_ref = _run(logprobs_and_entropy_reference, logits, labels, w_lp, w_h, temperature=1.3)
    torch.testing.assert_close(leaf.grad, grad_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.detach(), grad_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_padded_vocab_and_masked_columns(impl):
    """Megatron's padded columns (vocab_size=) are ignored; -inf logits give no NaN."""
    logits, labels, w_lp, w_h = _case((23,), 1000, torch.float32, seed=3)
    logits[:, 900:] = 1e4  # padding garbage that would dominate the softmax
    logits[:, 5:50] = float("-inf")
    labels = labels.clamp(max=899)
    labels[labels.ge(5) & labels.lt(50)] = 3
    lp, ent, grad = _run(logprobs_and_entropy, logits, labels, w_lp, w_h, impl=impl, vocab_size=900)
    finite = logits[:, :900].masked_fill(logits[:, :900].isinf(), -1e4)  # exp underflows to 0 the same way
    lp_ref, ent_ref, grad_ref = _run(logprobs_and_entropy_reference, finite, labels, w_lp, w_h)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad[:, :900], grad_ref, rtol=1e-5, atol=1e-5)
    assert grad[:, 900:].abs().max() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_large_logits_are_stable(impl):
    logits, labels, w_lp, w_h = _case((8,), 700, torch.float32, seed=4, scale=1.0)
    logits = logits * 1e3 + 5e3
    lp, ent, grad = _run(logprobs_and_entropy, logits, labels, w_lp, w_h, impl=impl)
    lp_ref, ent_ref, grad_ref = _run(logprobs_and_entropy_reference, logits, labels, w_lp, w_h)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 11, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.randint(0, 9, (4,), generator=g)

    def fused(x):
        return logprobs_and_entropy(x, labels, temperature=0.8, impl="torch", vocab_size=9, chunk_elems=20)

    def reference(x):
        return logprobs_and_entropy_reference(x, labels, 0.8, vocab_size=9)

    assert torch.autograd.gradcheck(fused, (logits,))
    assert torch.autograd.gradcheck(reference, (logits,))
    for a, b in zip(fused(logits), reference(logits)):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bad_inputs_name_the_problem():
    logits = torch.randn(3, 10)
    with pytest.raises(ValueError, match="labels must lie in"):
        logprobs_and_entropy(logits, torch.tensor([0, -100, 2]))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(logits, torch.tensor([0, 1, 2]), temperature=0.0)
    with pytest.raises(ValueError, match="vocab dimension"):
        logprobs_and_entropy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="vocab_size"):
        logprobs_and_entropy(logits, torch.tensor([0, 1, 2]), vocab_size=11)
    with pytest.raises(ValueError, match="impl"):
        logprobs_and_entropy(logits, torch.tensor([0, 1, 2]), impl="cupy")
