"""Rollout samples as training sequences, split over data-parallel ranks and packed into
micro-batches by a token budget.

A packed row holds several prompt+response sequences back to back; a micro-batch is one row of
`micro_batch_tokens` (GPU, varlen attention) or several shorter rows (CPU, where attention over a
row with a dense block mask costs its length squared). Attention stays within each sequence (block-diagonal
causal mask; on Transformer Engine, `packed_seq_params` with cumulative sequence lengths) and
positions restart at 0 for each sequence, so a packed row computes exactly what separate rows
would, without padding waste. `resp_index[b, t]` is the flat [rows x row_length] position whose
logits predict response token t of sequence b; per-sequence tensors are [B, T] with `resp_mask`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch


@dataclasses.dataclass
class TrainSequence:
    """One sampled response with everything the update needs (built on the driver rank)."""

    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    group: int  # index of its prompt in the step's batch
    behaviour_logp: list[float] | None = None  # from the rollout server
    truncated: bool = False
    correct: bool = False
    advantage: float = 0.0  # sequence-level advantage (group algorithms)
    loss_weight: float = 1.0  # 0 removes it from the loss (overlong filtering)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def shard_for_data_parallel(seqs: Sequence[TrainSequence], dp_rank: int, dp: int) -> list[TrainSequence]:
    """Balanced by tokens: longest first, each to the rank with the fewest tokens so far."""
    loads = [0] * dp
    owner = {}
    for i in sorted(range(len(seqs)), key=lambda i: (-seqs[i].length, i)):
        rank = min(range(dp), key=lambda r: (loads[r], r))
        loads[rank] += seqs[i].length
        owner[i] = rank
    return [seqs[i] for i in range(len(seqs)) if owner[i] == dp_rank]


def pack_rows(seqs: Sequence[TrainSequence], budget: int) -> list[list[int]]:
    """First-fit-decreasing packing of sequence indices into rows of at most `budget` tokens."""
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: (-seqs[i].length, i)):
        n = seqs[i].length
        if n > budget:
            raise ValueError(
                f"a sequence of {n} tokens (prompt {len(seqs[i].prompt_ids)} + response {len(seqs[i].response_ids)}) "
                f"exceeds actor.micro_batch_tokens={budget}; raise micro_batch_tokens to at least {n}"
            )
        for r, load in enumerate(loads):
            if load + n <= budget:
                rows[r].append(i)
                loads[r] += n
                break
        else:
            rows.append([i])
            loads.append(n)
    return rows


def build_microbatches(
    seqs: Sequence[TrainSequence],
    budget: int,
    device: torch.device,
    *,
    row_tokens: int | None = None,
    packed_seq_params: bool = False,
    pad_multiple: int = 8,
) -> list[dict]:
    """Pack `seqs` into micro-batches of about `budget` tokens: rows of at most `row_tokens`
    (default: one row of `budget`), `budget // row_tokens` rows per micro-batch, every row padded
    to one length and every micro-batch to one row count (pipeline stages exchange fixed shapes).
    Each dict has the model inputs and per-sequence tensors."""
    if not seqs:
        return []
    row_tokens = min(row_tokens or budget, budget)
    rows_per_mb = 1 if packed_seq_params else max(1, budget // row_tokens)
    rows = pack_rows(seqs, row_tokens)
    row_len = max(sum(seqs[i].length for i in row) for row in rows)
    row_len = -(-row_len // pad_multiple) * pad_multiple
    out = []
    for first in range(0, len(rows), rows_per_mb):
        group = rows[first:first + rows_per_mb]
        group += [[] for _ in range(rows_per_mb - len(group))]  # empty rows keep the shape fixed
        ids = torch.zeros(rows_per_mb, row_len, dtype=torch.long)
        labels = torch.zeros(rows_per_mb, row_len, dtype=torch.long)
        pos = torch.zeros(rows_per_mb, row_len, dtype=torch.long)
        # True = masked out (Megatron's convention); padding attends only to itself.
        mask = torch.ones(rows_per_mb, row_len, row_len, dtype=torch.bool)
        seq_ids = [i for row in group for i in row]
        t_max = max(len(seqs[i].response_ids) for i in seq_ids)
        resp_index = torch.zeros(len(seq_ids), t_max, dtype=torch.long)
        resp_mask = torch.zeros(len(seq_ids), t_max, dtype=torch.bool)
        cu = [0]
        b = 0
        for r, row in enumerate(group):
            start = 0
            for i in row:
                s = seqs[i]
                tokens = s.prompt_ids + s.response_ids
                n, p, k = len(tokens), len(s.prompt_ids), len(s.response_ids)
                ids[r, start:start + n] = torch.tensor(tokens)
                labels[r, start:start + n - 1] = torch.tensor(tokens[1:])
                pos[r, start:start + n] = torch.arange(n)
                mask[r, start:start + n, start:start + n] = ~torch.ones(n, n, dtype=torch.bool).tril()
                # flat index into [rows, row_len] of the position predicting each response token
                resp_index[b, :k] = r * row_len + torch.arange(start + p - 1, start + p - 1 + k)
                resp_mask[b, :k] = True
                b += 1
                start += n
                cu.append(start)
            pad = torch.arange(start, row_len)
            mask[r, pad, pad] = False
        mb = {
            "input_ids": ids.to(device),
            "position_ids": pos.to(device),
            "labels": labels.to(device),
            "attention_mask": mask.unsqueeze(1).to(device),
            "resp_index": resp_index.to(device),
            "resp_mask": resp_mask.to(device),
            "seq_ids": seq_ids,
            "num_tokens": sum(seqs[i].length for i in seq_ids),
        }
        if packed_seq_params:
            mb["packed_seq_params"] = _packed_seq_params(cu, device)
            mb.pop("attention_mask")
        out.append(mb)
    return out


def _packed_seq_params(cu: list[int], device):
    """THD packing for Transformer Engine attention (GPU path)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
    max_len = max(b - a for a, b in zip(cu[:-1], cu[1:]))
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu_t, cu_seqlens_kv=cu_t, max_seqlen_q=max_len, max_seqlen_kv=max_len
    )


def per_sequence_matrix(values: Sequence, t_max: int, device) -> torch.Tensor:
    """Right-pad ragged per-token values (tensors or lists) to [B, t_max] float32."""
    out = torch.zeros(len(values), t_max, dtype=torch.float32)
    for b, v in enumerate(values):
        if len(v):
            out[b, : len(v)] = torch.as_tensor(v, dtype=torch.float32)
    return out.to(device)


def split_minibatches(seqs: Sequence[TrainSequence], k: int) -> list[list[TrainSequence]]:
    """k contiguous, near-equal parts (some may be empty when there are fewer sequences than k)."""
    n = len(seqs)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [list(seqs[bounds[i]:bounds[i + 1]]) for i in range(k)]
