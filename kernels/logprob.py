"""Fused per-token log-probs and entropy from logits, without a float32 [tokens, vocab] copy.

`logprobs_and_entropy(logits, labels)` returns log p(label) and the entropy of softmax(logits / T)
for every token, in float32, with one pass over the vocabulary (online max / log-sum-exp). The
backward writes d(logits) in the logits' dtype (optionally into the logits buffer itself) for
gradients flowing into either output.

How the work is split:
- per row statistics over a slice of the vocabulary: the running max `m`, `s = sum exp(x - m)`,
  `t = sum exp(x - m) * (x - m)` and the label's logit `x[label]` (0 when the label is outside the
  slice), with `x = logits / T`. Slices merge exactly (`merge_stats`), so the same statistics
  serve vocabulary chunks (the fused linear path) and vocabulary-parallel shards (`tp_group`).
- from the merged statistics: `logZ = m + log s`, `entropy = log s - t / s`,
  `logp = x[label] - logZ`.
- backward: with `p = exp(x - logZ)` and `E[x] = logZ - entropy`,
  `d x_j = g_logp * (1[j == label] - p_j) - g_entropy * p_j * (x_j - E[x])`, `d logits = d x / T`.
  It needs only the saved per-row `logZ` and entropy, so with vocabulary-parallel logits each
  rank writes the gradient of its own shard and no communication happens in backward.

Two implementations with identical results: Triton kernels (compiled on GPUs, run by Triton's
interpreter in the CPU tests) and a torch path chunked over rows so that its float32
temporaries stay at `chunk_elems` elements (the memory win holds on CPU too).
`logprobs_and_entropy_reference` is the plain log_softmax + gather formula the tests compare with.

Megatron pads the vocabulary (make_vocab_size_divisible_by): pass `vocab_size=` the true vocab
size and columns at or beyond it are ignored (they get zero gradient), or slice the logits first.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megarl.kernels.dispatch import HAS_TRITON, autotune_configs, resolve_impl
from megarl.runtime import collectives
from megarl.runtime.device import is_gpu_device

DEFAULT_CHUNK_ELEMS = 1 << 18  # float32 temporaries of the torch path: 1 MiB each (cache-resident)
NEG_BIG = -1.0e30  # finite "minus infinity" for the running max (keeps 0 * (m_old - m_new) finite)

if HAS_TRITON:
    import triton
    import triton.language as tl

    def _row_configs(interpreter_block_n: int, interpreter_block_v: int):
        gpu = [
            triton.Config({"BLOCK_N": 1, "BLOCK_V": bv}, num_warps=w)
            for bv, w in ((2048, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16))
        ]
        gpu += [triton.Config({"BLOCK_N": 2, "BLOCK_V": 4096}, num_warps=8)]
        return autotune_configs(gpu, triton.Config({"BLOCK_N": interpreter_block_n, "BLOCK_V": interpreter_block_v}, num_warps=4))

    @triton.jit
    def _stats_kernel(
        logits_ptr, labels_ptr, stats_ptr,
        n_rows, n_cols, stride_row, inv_temp, vocab_start,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        """stats[0..3, row] = running max, sum exp, sum exp * (x - max), label logit over n_cols columns."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        rows_c = tl.minimum(rows, n_rows - 1)  # out-of-range rows re-read the last row; never stored
        row_base = logits_ptr + rows_c.to(tl.int64) * stride_row
        m = tl.full([BLOCK_N], -1.0e30, tl.float32)  # NEG_BIG
        s = tl.zeros([BLOCK_N], tl.float32)
        t = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(row_base[:, None] + cols[None, :], mask=(cols < n_cols)[None, :], other=float("-inf"))
            x = x.to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(x, axis=1))
            scale = tl.exp(m - m_new)
            d = x - m_new[:, None]
            e = tl.exp(d)
            d = tl.where(e > 0.0, d, 0.0)
            t = scale * (t + (m - m_new) * s) + tl.sum(e * d, axis=1)
            s = s * scale + tl.sum(e, axis=1)
            m = m_new
        local = tl.load(labels_ptr + rows_c).to(tl.int64) - vocab_start
        has = (local >= 0) & (local < n_cols)
        label_logit = tl.load(row_base + tl.where(has, local, 0), mask=has & row_ok, other=0.0).to(tl.float32) * inv_temp
        tl.store(stats_ptr + rows, m, mask=row_ok)
        tl.store(stats_ptr + n_rows + rows, s, mask=row_ok)
        tl.store(stats_ptr + 2 * n_rows + rows, t, mask=row_ok)
        tl.store(stats_ptr + 3 * n_rows + rows, label_logit, mask=row_ok)

    _stats_kernel_tuned = triton.autotune(configs=_row_configs(16, 2048), key=["n_cols"])(_stats_kernel)

    @triton.jit
    def _grad_kernel(
        logits_ptr, grad_ptr, labels_ptr, logz_ptr, ex_ptr, glp_ptr, gh_ptr,
        n_rows, n_valid, n_cols, stride_row, stride_grad_row, inv_temp, vocab_start,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        """grad[row, j] = (g_lp * (1[j == label] - p_j) - g_h * p_j * (x_j - E[x])) / T; 0 for j >= n_valid."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        rows_c = tl.minimum(rows, n_rows - 1)
        row_base = logits_ptr + rows_c.to(tl.int64) * stride_row
        grad_base = grad_ptr + rows_c.to(tl.int64) * stride_grad_row
        logz = tl.load(logz_ptr + rows_c)
        ex = tl.load(ex_ptr + rows_c)
        glp = tl.load(glp_ptr + rows_c)
        gh = tl.load(gh_ptr + rows_c)
        local = tl.load(labels_ptr + rows_c).to(tl.int64) - vocab_start
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            in_row = (cols < n_cols)[None, :] & row_ok[:, None]
            valid = (cols < n_valid)[None, :]
            x = tl.load(row_base[:, None] + cols[None, :], mask=in_row & valid, other=0.0).to(tl.float32) * inv_temp
            p = tl.exp(x - logz[:, None])
            g = -p * (glp[:, None] + gh[:, None] * (x - ex[:, None]))
            g = tl.where(valid & (p > 0.0), g, 0.0)
            g += tl.where(cols[None, :] == local[:, None], glp[:, None], 0.0)
            g = g * inv_temp
            tl.store(grad_base[:, None] + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=in_row)

    # Autotuning runs the kernel several times, which would corrupt an in-place gradient; the
    # in-place path launches `_grad_kernel` with the fixed config below instead.
    _grad_kernel_tuned = triton.autotune(configs=_row_configs(16, 2048), key=["n_cols"])(_grad_kernel)
    _INPLACE_CONFIG = {"BLOCK_N": 1, "BLOCK_V": 4096, "num_warps": 8}


def _empty_stats(n_rows: int, device, dtype=torch.float32) -> torch.Tensor:
    stats = torch.zeros(4, n_rows, device=device, dtype=dtype)
    stats[0] = NEG_BIG
    return stats


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def stats_triton(logits2d: torch.Tensor, labels: torch.Tensor, inv_temp: float, vocab_start: int, n_valid: int) -> torch.Tensor:
    """[4, N] float32 statistics of `logits2d[:, :n_valid] * inv_temp` with the Triton kernel."""
    n_rows = logits2d.shape[0]
    if n_rows == 0 or n_valid == 0:
        return _empty_stats(n_rows, logits2d.device)
    stats = torch.empty(4, n_rows, device=logits2d.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]),)  # noqa: E731
    _stats_kernel_tuned[grid](logits2d, labels, stats, n_rows, n_valid, logits2d.stride(0), float(inv_temp), int(vocab_start))
    return stats


def stats_torch(
    logits2d: torch.Tensor, labels: torch.Tensor, inv_temp: float, vocab_start: int, n_valid: int,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> torch.Tensor:
    """Same statistics as `stats_triton`, in torch, chunked over rows (float64 for float64 logits)."""
    n_rows = logits2d.shape[0]
    acc = _acc_dtype(logits2d.dtype)
    stats = _empty_stats(n_rows, logits2d.device, acc)
    if n_rows == 0 or n_valid == 0:
        return stats
    local = labels.to(torch.int64) - vocab_start
    has = (local >= 0) & (local < n_valid)
    index = torch.where(has, local, 0).unsqueeze(1)
    step = max(1, chunk_elems // n_valid)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        x = logits2d[r0:r1, :n_valid].to(acc, copy=True).mul_(inv_temp)
        m = x.amax(dim=1).clamp_(min=NEG_BIG)
        # exp underflows to exactly 0 below -745 (fp64) / -104 (fp32), so the clamp changes no
        # term of s and turns the 0 * (-inf) of masked (-inf) logits into 0 * (-1e4) = 0 in t.
        d = x.sub_(m.unsqueeze(1)).clamp_(min=-1.0e4)
        e = torch.exp(d)
        stats[0, r0:r1] = m
        stats[1, r0:r1] = e.sum(dim=1)
        stats[2, r0:r1] = e.mul_(d).sum(dim=1)
        label_logit = logits2d[r0:r1].gather(1, index[r0:r1]).squeeze(1).to(acc) * inv_temp
        stats[3, r0:r1] = torch.where(has[r0:r1], label_logit, 0.0)
    return stats


def merge_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Statistics of the union of two disjoint vocabulary slices (each [4, N])."""
    m = torch.maximum(a[0], b[0])
    sa, sb = torch.exp(a[0] - m), torch.exp(b[0] - m)
    out = torch.empty_like(a)
    out[0] = m
    out[1] = a[1] * sa + b[1] * sb
    out[2] = sa * (a[2] + (a[0] - m) * a[1]) + sb * (b[2] + (b[0] - m) * b[1])
    out[3] = a[3] + b[3]
    return out


def combine_stats_over_group(stats: torch.Tensor, group) -> torch.Tensor:
    """Merge every rank's vocabulary-shard statistics across `group` (two all-reduces)."""
    m = stats[0].clone()
    collectives.all_reduce(m, op="max", group=group)
    scale = torch.exp(stats[0] - m)
    summed = torch.stack([stats[1] * scale, scale * (stats[2] + (stats[0] - m) * stats[1]), stats[3]])
    collectives.all_reduce(summed, op="sum", group=group)
    return torch.cat([m.unsqueeze(0), summed])


def finalize_stats(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, entropy, logZ) from full-vocabulary statistics."""
    log_s = torch.log(stats[1])
    logz = stats[0] + log_s
    entropy = log_s - stats[2] / stats[1]
    return stats[3] - logz, entropy, logz


def grad_triton(logits2d, labels, logz, ex, g_lp, g_h, inv_temp, vocab_start, n_valid, out) -> torch.Tensor:
    """Write d(logits) into `out` (which may be `logits2d` itself) with the Triton kernel."""
    n_rows, n_cols = logits2d.shape
    if n_rows == 0:
        return out
    args = (logits2d, out, labels, logz, ex, g_lp, g_h, n_rows, n_valid, n_cols,
            logits2d.stride(0), out.stride(0), float(inv_temp), int(vocab_start))
    if out.data_ptr() == logits2d.data_ptr():
        cfg = _INPLACE_CONFIG
        grid = (triton.cdiv(n_rows, cfg["BLOCK_N"]),)
        if not is_gpu_device(logits2d.device):  # interpreter: fewer, larger blocks
            cfg = {"BLOCK_N": 16, "BLOCK_V": 2048, "num_warps": 4}
            grid = (triton.cdiv(n_rows, 16),)
        _grad_kernel[grid](*args, **cfg)
    else:
        grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"]),)  # noqa: E731
        _grad_kernel_tuned[grid](*args)
    return out


def grad_torch(logits2d, labels, logz, ex, g_lp, g_h, inv_temp, vocab_start, n_valid, out,
               chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """Same as `grad_triton`, in torch, chunked over rows; `out` may alias `logits2d`."""
    n_rows, n_cols = logits2d.shape
    acc = _acc_dtype(logits2d.dtype)
    local = labels.to(torch.int64) - vocab_start
    has = (local >= 0) & (local < n_valid)
    index = torch.where(has, local, 0).unsqueeze(1)
    if n_valid < n_cols:
        out[:, n_valid:].zero_()
    if n_valid == 0:
        return out
    c1 = -g_h * inv_temp
    c0 = -g_lp * inv_temp
    label_term = torch.where(has, g_lp * inv_temp, 0.0)
    step = max(1, chunk_elems // n_valid)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        x = logits2d[r0:r1, :n_valid].to(acc, copy=True).mul_(inv_temp)
        p = torch.sub(x, logz[r0:r1, None]).exp_()
        # d logits = p * (-g_h / T * (x - E[x]) - g_lp / T); x - E[x] first keeps large logits exact
        g = x.sub_(ex[r0:r1, None]).mul_(c1[r0:r1, None]).add_(c0[r0:r1, None]).mul_(p)
        g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # -inf logits: p = 0 times an infinite factor
        g.scatter_add_(1, index[r0:r1], label_term[r0:r1].unsqueeze(1))
        out[r0:r1, :n_valid] = g
    return out


def shard_stats(logits2d, labels, inv_temp, vocab_start, n_valid, impl, chunk_elems=DEFAULT_CHUNK_ELEMS):
    if impl == "triton":
        return stats_triton(logits2d, labels, inv_temp, vocab_start, n_valid)
    return stats_torch(logits2d, labels, inv_temp, vocab_start, n_valid, chunk_elems)


def shard_grad(logits2d, labels, logz, ex, g_lp, g_h, inv_temp, vocab_start, n_valid, out, impl,
               chunk_elems=DEFAULT_CHUNK_ELEMS):
    if impl == "triton":
        return grad_triton(logits2d, labels, logz, ex, g_lp, g_h, inv_temp, vocab_start, n_valid, out)
    return grad_torch(logits2d, labels, logz, ex, g_lp, g_h, inv_temp, vocab_start, n_valid, out, chunk_elems)


class _LogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits2d, labels, inv_temp, vocab_start, n_valid, group, impl, inplace_backward, chunk_elems):
        stats = shard_stats(logits2d, labels, inv_temp, vocab_start, n_valid, impl, chunk_elems)
        if group is not None:
            stats = combine_stats_over_group(stats, group)
        logp, entropy, logz = finalize_stats(stats)
        ctx.save_for_backward(logits2d, labels, logz, entropy)
        ctx.args = (inv_temp, vocab_start, n_valid, impl, inplace_backward, chunk_elems)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_h):
        logits2d, labels, logz, entropy = ctx.saved_tensors
        inv_temp, vocab_start, n_valid, impl, inplace_backward, chunk_elems = ctx.args
        g_lp = torch.zeros_like(logz) if g_lp is None else g_lp.to(logz.dtype).contiguous()
        g_h = torch.zeros_like(logz) if g_h is None else g_h.to(logz.dtype).contiguous()
        ex = logz - entropy
        out = logits2d if inplace_backward else torch.empty_like(logits2d)
        shard_grad(logits2d, labels, logz, ex, g_lp, g_h, inv_temp, vocab_start, n_valid, out, impl, chunk_elems)
        return out, None, None, None, None, None, None, None, None


def vocab_layout(local_vocab: int, tp_group, vocab_size: int | None) -> tuple[int, int, int]:
    """(vocab_start, valid columns of this shard, true vocab size) for Megatron's equal vocab split."""
    rank, world = (0, 1) if tp_group is None else (dist.get_rank(tp_group), dist.get_world_size(tp_group))
    padded = local_vocab * world
    if vocab_size is None:
        vocab_size = padded
    if not 0 < vocab_size <= padded:
        raise ValueError(
            f"vocab_size={vocab_size} must be in [1, {padded}] (the logits hold {local_vocab} columns x {world} "
            "tensor-parallel ranks); pass the tokenizer's true vocab size or None."
        )
    vocab_start = rank * local_vocab
    return vocab_start, max(0, min(local_vocab, vocab_size - vocab_start)), vocab_size


def check_labels(labels: torch.Tensor, vocab_size: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of token ids, got {labels.dtype}.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= vocab_size):
        raise ValueError(
            f"labels must lie in [0, {vocab_size}), got min {int(labels.min())} max {int(labels.max())}; replace "
            "ignored positions (e.g. -100) with any valid id such as 0 and mask them out of the loss."
        )


def check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (sampling temperature used by the rollout).")
    return 1.0 / float(temperature)


def logprobs_and_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    tp_group=None,
    impl: str = "auto",
    *,
    vocab_size: int | None = None,
    inplace_backward: bool = False,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) and entropy of softmax(logits / temperature), both float32.

    logits: [..., V] (fp32/bf16/fp16; fp64 keeps fp64 for gradcheck), the local vocabulary shard
    when `tp_group` is given (rank r holds columns [r * V, (r + 1) * V), Megatron's split).
    labels: [...] integer token ids in the global vocabulary.
    vocab_size: the true vocabulary size when the logits carry Megatron's padded columns.
    inplace_backward: write d(logits) into the logits buffer (saves one [N, V] tensor; the
    logits must not be needed after backward).
    Gradients stay sharded: each rank gets d(its logits shard) with no communication.
    """
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {logits.dtype}.")
    if logits.dim() < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} plus a vocab dimension.")
    inv_temp = check_temperature(temperature)
    local_vocab = logits.shape[-1]
    vocab_start, n_valid, vocab_size = vocab_layout(local_vocab, tp_group, vocab_size)
    check_labels(labels, vocab_size)
    which = resolve_impl(impl, logits)
    logits2d = logits.reshape(-1, local_vocab)
    if logits2d.stride(1) != 1:
        logits2d = logits2d.contiguous()
    labels1d = labels.reshape(-1).contiguous()
    logp, entropy = _LogprobEntropy.apply(
        logits2d, labels1d, inv_temp, vocab_start, n_valid, tp_group, which, inplace_backward, chunk_elems
    )
    return logp.view(labels.shape), entropy.view(labels.shape)


def logprobs_and_entropy_reference(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, vocab_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive formula (float32 log_softmax over [N, V], gather, p * log p): the tests' oracle."""
    x = logits[..., : (vocab_size or logits.shape[-1])].to(_acc_dtype(logits.dtype)) / temperature
    logp_all = torch.log_softmax(x, dim=-1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1).to(torch.int64)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
