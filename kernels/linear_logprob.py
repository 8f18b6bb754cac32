"""Fused linear log-prob + entropy: from hidden states and the output-layer weight, never the full logits.

`linear_logprobs_and_entropy(hidden [N, H], weight [V, H], labels [N])` equals
`logprobs_and_entropy(hidden @ weight.T, labels)` but walks the vocabulary in chunks of
`vocab_chunk` columns (and the tokens in chunks of `token_chunk` rows): each chunk's logits
[token_chunk, vocab_chunk] come from one matmul (cuBLAS on GPUs, the CPU BLAS otherwise), feed
the per-row online statistics of `megarl.kernels.logprob` (Triton or torch), and are dropped. The
backward recomputes each chunk's logits, overwrites them with d(logits) in place, and
accumulates d(hidden) = dL @ W_chunk and d(W_chunk) = dL^T @ hidden. Beyond its inputs and the
gradients it returns, the path holds one logits chunk, a float32 d(hidden) accumulator [N, H]
and, when the tokens are split, a float32 d(W_chunk) accumulator [vocab_chunk, H]; the torch
statistics add at most two float32 temporaries of `chunk_elems` elements.

This is the memory-optimal path of Liger-Kernel's fused linear cross entropy and verl's
linear_cross_entropy, extended to return the entropy too. Logit chunks are computed in the
inputs' dtype (as Megatron's output layer does), with float32 statistics.

Vocabulary-parallel: with `tp_group`, `weight` is this rank's vocabulary shard [V / tp, H] and
`hidden` the full (replicated) hidden states; the statistics are merged across the group, the
weight gradient stays sharded and the hidden gradient is all-reduced over the group (what
Megatron's ColumnParallelLinear does for its input).
"""

from __future__ import annotations

import torch

from megarl.kernels.dispatch import resolve_impl
from megarl.kernels.logprob import (
    DEFAULT_CHUNK_ELEMS,
    _empty_stats,
    check_labels,
    check_temperature,
    combine_stats_over_group,
    finalize_stats,
    merge_stats,
    shard_grad,
    shard_stats,
    vocab_layout,
)
from megarl.runtime import collectives

DEFAULT_VOCAB_CHUNK = 4096


def _chunks(total: int, step: int):
    for start in range(0, total, step):
        yield start, min(total, start + step)


class _LinearLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, inv_temp, vocab_start, n_valid, group, impl, vocab_chunk, token_chunk, chunk_elems):
        n_rows = hidden.shape[0]
        stats = None
        for v0, v1 in _chunks(n_valid, vocab_chunk):
            w = weight[v0:v1]
            chunk_stats = torch.empty(4, n_rows, device=hidden.device, dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32)
            for n0, n1 in _chunks(n_rows, token_chunk):
                logits = hidden[n0:n1] @ w.t()
                chunk_stats[:, n0:n1] = shard_stats(logits, labels[n0:n1], inv_temp, vocab_start + v0, v1 - v0, impl, chunk_elems)
                del logits
            stats = chunk_stats if stats is None else merge_stats(stats, chunk_stats)
        if stats is None:  # this shard holds only vocabulary padding
            stats = _empty_stats(n_rows, hidden.device, torch.float64 if hidden.dtype == torch.float64 else torch.float32)
        if group is not None:
            stats = combine_stats_over_group(stats, group)
        logp, entropy, logz = finalize_stats(stats)
        ctx.save_for_backward(hidden, weight, labels, logz, entropy)
        ctx.args = (inv_temp, vocab_start, n_valid, group, impl, vocab_chunk, token_chunk, chunk_elems)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_h):
        hidden, weight, labels, logz, entropy = ctx.saved_tensors
        inv_temp, vocab_start, n_valid, group, impl, vocab_chunk, token_chunk, chunk_elems = ctx.args
        g_lp = torch.zeros_like(logz) if g_lp is None else g_lp.to(logz.dtype).contiguous()
        g_h = torch.zeros_like(logz) if g_h is None else g_h.to(logz.dtype).contiguous()
        ex = logz - entropy
        n_rows = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=acc) if need_h else None
        grad_weight = torch.zeros_like(weight) if need_w else None
        split_tokens = token_chunk < n_rows
        for v0, v1 in _chunks(n_valid, vocab_chunk):
            w = weight[v0:v1]
            grad_w_acc = torch.zeros(w.shape, device=w.device, dtype=acc) if (need_w and split_tokens) else None
            for n0, n1 in _chunks(n_rows, token_chunk):
                logits = hidden[n0:n1] @ w.t()
                rows = slice(n0, n1)
                shard_grad(logits, labels[rows], logz[rows], ex[rows], g_lp[rows], g_h[rows], inv_temp,
                           vocab_start + v0, v1 - v0, logits, impl, chunk_elems)
                if need_h:
                    grad_hidden[rows] += logits @ w
                if need_w:
                    if split_tokens:
                        grad_w_acc += logits.t() @ hidden[rows]
                    else:
                        torch.matmul(logits.t(), hidden[rows], out=grad_weight[v0:v1])
                del logits
            if grad_w_acc is not None:
                grad_weight[v0:v1] = grad_w_acc
        if need_h and group is not None:
            collectives.all_reduce(grad_hidden, op="sum", group=group)
        if need_h:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None


def linear_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    tp_group=None,
    impl: str = "auto",
    *,
    vocab_size: int | None = None,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    token_chunk: int | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) and entropy of softmax(hidden @ weight.T / temperature), float32.

    hidden: [..., H]; weight: [V, H] (this rank's vocabulary shard under `tp_group`);
    labels: [...] token ids in the global vocabulary. vocab_size: true vocab size when the
    weight carries Megatron's padded rows. vocab_chunk/token_chunk: logits chunk shape
    (token_chunk=None takes all tokens at once, so d(weight) needs no float32 accumulator).
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be labels {tuple(labels.shape)} plus a hidden dimension.")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} must be [vocab, hidden={hidden.shape[-1]}] (the output layer's weight).")
    if hidden.dtype != weight.dtype or not hidden.dtype.is_floating_point:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one floating dtype.")
    if vocab_chunk < 1 or (token_chunk is not None and token_chunk < 1):
        raise ValueError(f"vocab_chunk={vocab_chunk} and token_chunk={token_chunk} must be positive.")
    inv_temp = check_temperature(temperature)
    vocab_start, n_valid, vocab_size = vocab_layout(weight.shape[0], tp_group, vocab_size)
    check_labels(labels, vocab_size)
    which = resolve_impl(impl, hidden, weight)
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    labels1d = labels.reshape(-1).contiguous()
    n_rows = hidden2d.shape[0]
    logp, entropy = _LinearLogprobEntropy.apply(
        hidden2d, weight, labels1d, inv_temp, vocab_start, n_valid, tp_group, which,
        vocab_chunk, max(1, token_chunk or n_rows), chunk_elems,
    )
    return logp.view(labels.shape), entropy.view(labels.shape)


def linear_logprobs_and_entropy_reference(hidden, weight, labels, temperature: float = 1.0, vocab_size: int | None = None):
    """The naive path: full logits = hidden @ weight.T, then float32 log_softmax + gather."""
    from megarl.kernels.logprob import logprobs_and_entropy_reference

    return logprobs_and_entropy_reference(hidden @ weight.t(), labels, temperature, vocab_size)
