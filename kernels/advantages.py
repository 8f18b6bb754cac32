"""Advantage estimators for PPO and group-relative RL: GAE, GRPO / Dr. GRPO / RLOO, masked whitening.

Each has a Triton kernel (one program per block of sequences or prompts) and a plain torch
reference with the same semantics; `impl="auto"` picks Triton on GPUs and torch on CPU.

Semantics (the references below are the definition):
- `gae`: a reverse scan over [B, T] with `mask` marking response tokens. Masked positions are
  skipped, not terminal: the next value and the running advantage carry over them, so holes in
  the mask (e.g. tool output) are bridged and right padding ends each sequence with a value of
  0 after its last token. Returns (advantages, returns = advantages + values), both 0 where masked.
  Whitening is left to the caller (`masked_whiten`), as PPO recipes differ.
- `group_advantages`: rewards [P, n] (n samples per prompt), `mask` [P, n] marking samples that
  count (filtered samples are 0 in the output and excluded from the group statistics).
  mean_std: (r - mean) / (std + eps) with the unbiased std (torch.std, as in verl and TRL; GRPO);
  mean: r - mean (no std division; Dr. GRPO, REINFORCE++-baseline);
  leave_one_out: r - mean of the other samples (RLOO).
  Groups with fewer than 2 counted samples get 0 (no relative signal).
- `masked_whiten`: (x - mean) / sqrt(var + eps) over the masked elements, unbiased variance,
  0 where masked; `shift_mean=False` adds the mean back.
"""

from __future__ import annotations

import torch

from megarl.kernels.dispatch import HAS_TRITON, autotune_configs, resolve_impl

GROUP_MODES = ("mean_std", "mean", "leave_one_out")  # the Triton kernel's MODE is the index here
# The modes' names before they said what they compute (named after the paper that used them): refused,
# naming the new one.
RENAMED_GROUP_MODES = {"grpo": "mean_std", "drgrpo": "mean", "rloo": "leave_one_out"}

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=autotune_configs(
            [triton.Config({"BLOCK_B": b}, num_warps=w) for b, w in ((32, 1), (64, 2), (128, 4))],
            triton.Config({"BLOCK_B": 64}, num_warps=4),
        ),
        key=["T"],
    )
    @triton.jit
    def _gae_kernel(r_ptr, v_ptr, m_ptr, adv_ptr, ret_ptr, B, T, gamma, lam, BLOCK_B: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        ok = rows < B
        base = rows.to(tl.int64) * T
        last = tl.zeros([BLOCK_B], tl.float32)
        next_value = tl.zeros([BLOCK_B], tl.float32)
        for i in range(0, T):
            t = T - 1 - i
            r = tl.load(r_ptr + base + t, mask=ok, other=0.0)
            v = tl.load(v_ptr + base + t, mask=ok, other=0.0)
            keep = tl.load(m_ptr + base + t, mask=ok, other=0.0) != 0.0
            candidate = r + gamma * next_value - v + gamma * lam * last
            last = tl.where(keep, candidate, last)
            next_value = tl.where(keep, v, next_value)
            tl.store(adv_ptr + base + t, tl.where(keep, candidate, 0.0), mask=ok)
            tl.store(ret_ptr + base + t, tl.where(keep, candidate + v, 0.0), mask=ok)

    @triton.autotune(
        configs=autotune_configs(
            [triton.Config({"BLOCK_P": p}, num_warps=w) for p, w in ((8, 1), (32, 2), (64, 4))],
            triton.Config({"BLOCK_P": 32}, num_warps=4),
        ),
        key=["n", "MODE"],
    )
    @triton.jit
    def _group_kernel(r_ptr, m_ptr, out_ptr, P, n, eps, MODE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        cols = tl.arange(0, BLOCK_G)
        inside = (rows < P)[:, None] & (cols < n)[None, :]
        offs = rows.to(tl.int64)[:, None] * n + cols[None, :]
        r = tl.load(r_ptr + offs, mask=inside, other=0.0)
        keep = tl.load(m_ptr + offs, mask=inside, other=0.0)
        count = tl.sum(keep, axis=1)
        mean = tl.sum(r * keep, axis=1) / tl.maximum(count, 1.0)
        centered = (r - mean[:, None]) * keep
        if MODE == 0:
            var = tl.sum(centered * centered, axis=1) / tl.maximum(count - 1.0, 1.0)
            adv = centered / (tl.sqrt(var)[:, None] + eps)
        elif MODE == 1:
            adv = centered
        else:
            adv = centered * (count / tl.maximum(count - 1.0, 1.0))[:, None]
        adv = tl.where((keep != 0.0) & (count >= 2.0)[:, None], adv, 0.0)
        tl.store(out_ptr + offs, adv, mask=inside)

    @triton.jit
    def _moments_kernel(x_ptr, m_ptr, part_ptr, numel, shift, BLOCK: tl.constexpr):
        """part[0..2, pid] = sum(mask), sum((x - shift) * mask), sum((x - shift)^2 * mask) over one block."""
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < numel
        keep = tl.load(m_ptr + offs, mask=inside, other=0.0)
        d = (tl.load(x_ptr + offs, mask=inside, other=0.0) - shift) * keep
        n_blocks = tl.num_programs(0)
        tl.store(part_ptr + pid, tl.sum(keep, axis=0))
        tl.store(part_ptr + n_blocks + pid, tl.sum(d, axis=0))
        tl.store(part_ptr + 2 * n_blocks + pid, tl.sum(d * d, axis=0))

    @triton.jit
    def _whiten_apply_kernel(x_ptr, m_ptr, out_ptr, numel, mean, rstd, add_back, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < numel
        keep = tl.load(m_ptr + offs, mask=inside, other=0.0)
        x = tl.load(x_ptr + offs, mask=inside, other=0.0)
        y = (x - mean) * rstd + add_back
        tl.store(out_ptr + offs, tl.where(keep != 0.0, y, 0.0), mask=inside)


def _as_f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def _mask_like(mask: torch.Tensor | None, ref: torch.Tensor, name: str) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(ref, dtype=torch.float32)
    if mask.shape != ref.shape:
        raise ValueError(f"{name} mask {tuple(mask.shape)} must have the shape of the values {tuple(ref.shape)}.")
    return _as_f32(mask)


# ----------------------------------------------------------------------------- GAE
def gae_reference(rewards, values, mask, gamma: float, lam: float):
    """Plain reverse loop; see the module docstring for the masking rule."""
    rewards, values, mask = rewards.to(torch.float64), values.to(torch.float64), mask.to(torch.bool)
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(last)
    for t in reversed(range(T)):
        candidate = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * last
        keep = mask[:, t]
        last = torch.where(keep, candidate, last)
        next_value = torch.where(keep, values[:, t], next_value)
        adv[:, t] = torch.where(keep, candidate, 0.0)
    returns = torch.where(mask, adv + values, 0.0)
    return adv.to(torch.float32), returns.to(torch.float32)


def gae(rewards, values, mask, gamma: float, lam: float, impl: str = "auto"):
    """Generalized advantage estimation over [B, T]; returns float32 (advantages, returns)."""
    if rewards.dim() != 2 or rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask {tuple(mask.shape)} must all be [B, T].")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma={gamma} and lam={lam} must lie in [0, 1].")
    if resolve_impl(impl, rewards) == "torch":
        return gae_reference(rewards, values, mask, gamma, lam)
    r, v, m = _as_f32(rewards), _as_f32(values), _as_f32(mask)
    B, T = r.shape
    adv, ret = torch.empty_like(r), torch.empty_like(r)
    if r.numel():
        grid = lambda meta: (triton.cdiv(B, meta["BLOCK_B"]),)  # noqa: E731
        _gae_kernel[grid](r, v, m, adv, ret, B, T, float(gamma), float(lam))
    return adv, ret


# ----------------------------------------------------------------------------- group advantages
def group_advantages_reference(rewards, mask=None, mode: str = "mean_std", eps: float = 1e-6):
    r = rewards.to(torch.float64)
    keep = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    count = keep.sum(1, keepdim=True).to(r.dtype)
    mean = torch.where(keep, r, 0.0).sum(1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(keep, r - mean, 0.0)
    if mode == "mean_std":
        std = (centered.pow(2).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        adv = centered / (std + eps)
    elif mode == "mean":
        adv = centered
    else:
        adv = centered * count / (count - 1).clamp(min=1)
    return torch.where(keep & (count >= 2), adv, 0.0).to(torch.float32)


def group_advantages(rewards, mask=None, mode: str = "mean_std", eps: float = 1e-6, impl: str = "auto"):
    """Group-relative advantages over rewards [num_prompts, n]; float32 [num_prompts, n]."""
    if mode in RENAMED_GROUP_MODES:
        raise ValueError(f"mode={mode!r} was renamed to {RENAMED_GROUP_MODES[mode]!r}; pass mode={RENAMED_GROUP_MODES[mode]!r}")
    if mode not in GROUP_MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(GROUP_MODES)} (mean_std: (r - mean) / std, "
                         "mean: r - mean, leave_one_out: r - mean of the other samples)")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, samples_per_prompt], got {tuple(rewards.shape)}; reshape with .view(-1, n).")
    keep = _mask_like(mask, rewards, "group_advantages")
    if resolve_impl(impl, rewards) == "torch":
        return group_advantages_reference(rewards, mask, mode, eps)
    P, n = rewards.shape
    r = _as_f32(rewards)
    out = torch.empty_like(r)
    if r.numel():
        grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]),)  # noqa: E731
        _group_kernel[grid](r, keep, out, P, n, float(eps), MODE=GROUP_MODES.index(mode), BLOCK_G=triton.next_power_of_2(n))
    return out


# ----------------------------------------------------------------------------- whitening
def masked_whiten_reference(x, mask, shift_mean: bool = True, eps: float = 1e-8):
    xd, keep = x.to(torch.float64), mask.to(torch.bool)
    count = keep.sum()
    mean = torch.where(keep, xd, 0.0).sum() / count
    var = torch.where(keep, (xd - mean) ** 2, 0.0).sum() / (count - 1)
    y = (xd - mean) * torch.rsqrt(var + eps) + (0.0 if shift_mean else mean)
    return torch.where(keep, y, 0.0).to(torch.float32)


def masked_whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8, impl: str = "auto"):
    """Whiten `x` over the elements where `mask` is set (unbiased variance); 0 elsewhere."""
    keep = _mask_like(mask, x, "masked_whiten")
    count = int(keep.count_nonzero())
    if count < 2:
        raise ValueError(f"masked_whiten needs at least 2 unmasked elements, got {count}; skip whitening for such batches.")
    if resolve_impl(impl, x) == "torch":
        return masked_whiten_reference(x, keep, shift_mean, eps)
    xf = _as_f32(x)
    numel, block = xf.numel(), 4096
    n_blocks = triton.cdiv(numel, block)
    parts = torch.empty(3, n_blocks, device=xf.device, dtype=torch.float32)
    _moments_kernel[(n_blocks,)](xf, keep, parts, numel, 0.0, BLOCK=block)
    mean = float(parts[1].double().sum() / count)
    _moments_kernel[(n_blocks,)](xf, keep, parts, numel, mean, BLOCK=block)
    var = float(parts[2].double().sum() / (count - 1))
    out = torch.empty_like(xf)
    _whiten_apply_kernel[(n_blocks,)](xf, keep, out, numel, mean, (var + eps) ** -0.5, 0.0 if shift_mean else mean, BLOCK=block)
    return out
