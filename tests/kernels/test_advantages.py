"""GAE, group advantages (GRPO / Dr. GRPO / RLOO) and masked whitening: Triton == torch reference == formulas."""

import pytest
import torch

from megarl.kernels.advantages import (
    gae,
    gae_reference,
    group_advantages,
    group_advantages_reference,
    masked_whiten,
    masked_whiten_reference,
)


def _ragged_mask(B, T, g):
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    mask[0, 1:3] = False  # a hole inside a response (e.g. tool output)
    return mask


def test_gae_reference_matches_closed_form_without_mask():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 9, generator=g, dtype=torch.float64), torch.randn(3, 9, generator=g, dtype=torch.float64)
    gamma, lam = 0.97, 0.9
    next_v = torch.cat([v[:, 1:], torch.zeros(3, 1, dtype=v.dtype)], 1)
    delta = r + gamma * next_v - v
    expected = torch.stack([sum((gamma * lam) ** k * delta[:, t + k] for k in range(9 - t)) for t in range(9)], 1)
    adv, ret = gae_reference(r, v, torch.ones(3, 9, dtype=torch.bool), gamma, lam)
    torch.testing.assert_close(adv, expected.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ret, (expected + v).float(), rtol=1e-6, atol=1e-6)


def test_gae_mask_skips_holes_and_padding():
    r = torch.tensor([[1.0, 5.0, 2.0, 7.0]])
    v = torch.tensor([[0.5, 9.0, 0.25, 9.0]])
    mask = torch.tensor([[True, False, True, False]])
    adv, ret = gae_reference(r, v, mask, 1.0, 1.0)
    # last kept token (t=2): 2 - 0.25; t=0 bridges the hole: 1 + 0.25 - 0.5 + (2 - 0.25)
    torch.testing.assert_close(adv, torch.tensor([[2.5, 0.0, 1.75, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[3.0, 0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("B,T", [(5, 33), (70, 8)])
def test_gae_triton_matches_reference(B, T):
    g = torch.Generator().manual_seed(B)
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = _ragged_mask(B, T, g)
    adv, ret = gae(r, v, mask, 0.99, 0.95, impl="triton")
    adv_ref, ret_ref = gae_reference(r, v, mask, 0.99, 0.95)
    torch.testing.assert_close(adv, adv_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, ret_ref, rtol=1e-5, atol=1e-5)


def _explicit_group(rewards, keep, mode, eps):
    out = torch.zeros_like(rewards)
    for p in range(rewards.shape[0]):
        idx = keep[p].nonzero().flatten()
        r = rewards[p, idx]
        if len(idx) < 2:
            continue
        if mode == "mean_std":
            out[p, idx] = (r - r.mean()) / (r.std() + eps)
        elif mode == "mean":
            out[p, idx] = r - r.mean()
        else:
            out[p, idx] = torch.stack([r[i] - torch.cat([r[:i], r[i + 1:]]).mean() for i in range(len(idx))])
    return out


@pytest.mark.parametrize("mode", ["mean_std", "mean", "leave_one_out"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_group_advantages(mode, impl):
    g = torch.Generator().manual_seed(1)
    rewards = torch.randint(0, 2, (37, 6), generator=g).float() + 0.1 * torch.randn(37, 6, generator=g)
    keep = torch.rand(37, 6, generator=g) > 0.2
    keep[0] = False
    keep[1] = torch.tensor([True, False, False, False, False, False])  # one sample left: 0
    adv = group_advantages(rewards, keep, mode=mode, impl=impl)
    torch.testing.assert_close(adv, _explicit_group(rewards, keep, mode, 1e-6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adv, group_advantages_reference(rewards, keep, mode), rtol=1e-5, atol=1e-5)
    unmasked = group_advantages(rewards, None, mode=mode, impl=impl)
    torch.testing.assert_close(unmasked, _explicit_group(rewards, torch.ones_like(keep), mode, 1e-6), rtol=1e-5, atol=1e-5)


def test_group_advantages_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        group_advantages(torch.zeros(2, 4), mode="ppo")
    for old, new in (("grpo", "mean_std"), ("drgrpo", "mean"), ("rloo", "leave_one_out")):  # the names before the rename
        with pytest.raises(ValueError, match=f"mode='{old}' was renamed to '{new}'"):
            group_advantages(torch.zeros(2, 4), mode=old, impl="torch")
    with pytest.raises(ValueError, match="num_prompts"):
        group_advantages(torch.zeros(8))


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten(impl, shift_mean):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 1300, generator=g) * 3 + 5
    mask = _ragged_mask(7, 1300, g)
    y = masked_whiten(x, mask, shift_mean=shift_mean, impl=impl)
    sel = x[mask].double()
    expected = (sel - sel.mean()) / torch.sqrt(sel.var() + 1e-8) + (0 if shift_mean else sel.mean())
    torch.testing.assert_close(y[mask], expected.float(), rtol=1e-5, atol=1e-5)
    assert y[~mask].abs().max() == 0
    torch.testing.assert_close(y, masked_whiten_reference(x, mask, shift_mean), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        masked_whiten(x, torch.zeros_like(mask), impl=impl)


def test_masked_whiten_without_mask_on_the_torch_path():
    """mask=None means every element (as on the Triton path); the torch path raised
    AttributeError on None.to (fails before the fix)."""
    from megarl.kernels.advantages import masked_whiten

    x = torch.tensor([1.0, 2.0, 4.0, 7.0])
    expected = (x - x.mean()) / x.std()
    torch.testing.assert_close(masked_whiten(x, None, impl="torch"), expected, rtol=1e-6, atol=1e-6)
