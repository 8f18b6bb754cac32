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


def pack_rows(seqs: Sequence[TrainSequence], budget: int, limit: int | None = None) -> list[list[int]]:
    """First-fit-decreasing packing of sequence indices into rows of at most `budget` tokens; a
    sequence longer than `budget` but within `limit` (the micro-batch budget) gets a row of its own."""
    limit = budget if limit is None else limit
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: (-seqs[i].length, i)):
        n = seqs[i].length
        if n > limit:
            raise ValueError(
                f"a sequence of {n} tokens (prompt {len(seqs[i].prompt_ids)} + response {len(seqs[i].response_ids)}) "
                f"exceeds actor.micro_batch_tokens={limit}; raise micro_batch_tokens to at least {n}"
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
    """Pack `seqs` into micro-batches of at most `budget` tokens: rows of at most `row_tokens`
    (default: one row of `budget`), at most `budget // row_tokens` rows per micro-batch, every row
    padded to one length and every micro-batch to one row count (pipeline stages exchange fixed
    shapes).
    Each dict has the model inputs and per-sequence tensors."""
    if not seqs:
        return []
    row_tokens = min(row_tokens or budget, budget)
    rows = pack_rows(seqs, row_tokens, limit=budget)
    row_len = max(sum(seqs[i].length for i in row) for row in rows)
    row_len = -(-row_len // pad_multiple) * pad_multiple
    rows_per_mb = 1 if packed_seq_params else max(1, budget // row_len)
    # As few micro-batches as the budget allows, with the rows spread evenly over them (fewer
    # all-padding rows than filling each to the budget and padding the last).
    num_mbs = -(-len(rows) // rows_per_mb)
    rows_per_mb = -(-len(rows) // num_mbs)
    out = []
    for first in range(0, len(rows), rows_per_mb):
        group = rows[first:first + rows_per_mb]
        group += [[] for _ in range(rows_per_mb - len(group))]  # empty rows keep the shape fixed
        seq_ids = [i for row in group for i in row]
        t_max = max(len(seqs[i].response_ids) for i in seq_ids)
        # Built as Python lists (one tensor per field, not per sequence): token ids, next-token
        # labels, positions restarting at 0, and the segment id of every position (each sequence
        # its own; padding positions each their own, negative) for the mask below.
        ids, labels, pos, segment = [], [], [], []
        resp_index, resp_len = [], []
        cu = [0]
        b = 0
        for r, row in enumerate(group):
            row_ids, row_labels, row_pos, row_seg = [], [], [], []
            for i in row:
                s = seqs[i]
                tokens = s.prompt_ids + s.response_ids
                n, p, k = len(tokens), len(s.prompt_ids), len(s.response_ids)
                start = len(row_ids)
                # flat index into [rows, row_len] of the position predicting each response token
                at = r * row_len + start + p - 1
                resp_index.append(list(range(at, at + k)) + [0] * (t_max - k))
                resp_len.append(k)
                row_ids += tokens
                row_labels += tokens[1:] + [0]
                row_pos += range(n)
                row_seg += [b] * n
                b += 1
                cu.append(start + n)
            pad = row_len - len(row_ids)
            ids.append(row_ids + [0] * pad)
            labels.append(row_labels + [0] * pad)
            pos.append(row_pos + [0] * pad)
            segment.append(row_seg + list(range(-(r * row_len + 1), -(r * row_len + 1) - pad, -1)))
        ids, labels, pos, segment = (torch.tensor(x, dtype=torch.long) for x in (ids, labels, pos, segment))
        resp_index = torch.tensor(resp_index, dtype=torch.long)
        resp_mask = torch.arange(t_max).unsqueeze(0) < torch.tensor(resp_len).unsqueeze(1)
        # The response-predicting positions alone: `resp_flat` (into [B * T]), their flat
        # position in Megatron's s-major [s, b] layout (`logit_index`) and their labels.
        resp_flat = resp_mask.reshape(-1).nonzero().squeeze(1)
        flat = resp_index.reshape(-1)[resp_flat]  # into [rows, row_len]
        mb = {
            "input_ids": ids.to(device),
            "position_ids": pos.to(device),
            "labels": labels.to(device),
            "resp_index": resp_index.to(device),
            "resp_mask": resp_mask.to(device),
            "resp_flat": resp_flat.to(device),
            "logit_index": ((flat % row_len) * rows_per_mb + flat // row_len).to(device),
            "logit_labels": labels.reshape(-1)[flat].to(device),
            "seq_ids": seq_ids,
            "num_tokens": sum(seqs[i].length for i in seq_ids),
        }
        if packed_seq_params:
            mb["packed_seq_params"] = _packed_seq_params(cu, device)
        else:  # True = masked out (Megatron's convention): other sequences, the future; padding
            # attends only to itself.
            causal = torch.ones(row_len, row_len, dtype=torch.bool).tril_()
            mask = (segment.unsqueeze(2) != segment.unsqueeze(1)) | ~causal
            mb["attention_mask"] = mask.unsqueeze(1).to(device)
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
    rows = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in values]
    if not rows:
        return torch.zeros(0, t_max, dtype=torch.float32, device=device)
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)[:, :t_max]
    if padded.shape[1] < t_max:
        padded = torch.nn.functional.pad(padded, (0, t_max - padded.shape[1]))
    return padded.to(device)


def split_minibatches(seqs: Sequence[TrainSequence], k: int) -> list[list[TrainSequence]]:
    """k contiguous, near-equal parts (some may be empty when there are fewer sequences than k)."""
    n = len(seqs)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [list(seqs[bounds[i]:bounds[i + 1]]) for i in range(k)]
