"""Rollout samples as training sequences, split over data-parallel ranks and packed into
micro-batches by a token budget.

One packing format on every machine: a micro-batch is one packed row (batch 1) of at most
`micro_batch_tokens` tokens in Megatron's THD layout, described by `PackedSeqParams` whose
cumulative lengths cover every token of the row: each sequence is a segment, and the padding that
gives every micro-batch the same length (pipeline stages exchange fixed shapes) is cut into
segments of its own, none longer than the row's longest sequence. Megatron's THD RoPE
(`torch.split` by segment length) and the core attention read those lengths: Transformer Engine's
varlen attention on GPUs, megarl's SDPA kernel (megarl.models.attention) on CPU. Attention stays
within each segment and positions restart at 0 for each, so a packed row computes exactly what
separate rows would. `resp_index[b, t]` is the position in the row whose logits predict response
token t of sequence b; per-sequence tensors are [B, T] with `resp_mask`, which marks the model's response tokens only (a
tool's output in a multi-turn sample, `TrainSequence.loss_mask` 0, is context: attended to, never
predicted, so no log-prob, loss or metric sees it).
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Sequence

import torch

from megarl.algorithms.losses import LossTargets
from megarl.models.pipeline import ModelInput


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
    versions: list[int] | None = None  # policy version (optimizer steps) that generated each response token
    # Per response token: 1 the model generated it, 0 a tool wrote it (multi-turn rollouts; None: all the
    # model's). Tool tokens are context only: no log-prob, loss, advantage, KL, entropy or metric counts them.
    loss_mask: list[int] | None = None
    routes: str | None = None  # MoE: the rollout's experts per token (megarl.rollout.routed_experts, encoded)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def model_tokens(self) -> int:
        """Response tokens the model generated (the ones the loss counts)."""
        return len(self.response_ids) if self.loss_mask is None else sum(self.loss_mask)


@dataclasses.dataclass(kw_only=True)
class MicroBatch(ModelInput):
    """One packed THD row of sequences: the model inputs plus where each response token sits."""

    resp_index: torch.Tensor  # [B, T] row position whose logits predict response token t of sequence b
    resp_mask: torch.Tensor  # [B, T] True for real response tokens
    resp_flat: torch.Tensor  # indices of the real response tokens in [B * T]
    logit_labels: torch.Tensor  # labels at logit_index
    seq_ids: list[int]  # the packed sequences, as indices into the list they were built from
    num_tokens: int
    targets: LossTargets | None = None  # attached for the update
    empty: bool = False  # a stand-in row so that a rank without sequences still joins the optimizer step


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


def build_microbatches(seqs: Sequence[TrainSequence], budget: int, device: torch.device, *,
                       pad_multiple: int = 8) -> list[MicroBatch]:
    """Pack `seqs` into micro-batches of one THD row of at most `budget` tokens each, every row
    padded to one length (a multiple of `pad_multiple`): the model inputs (`input_ids`,
    `position_ids` [1, L], `packed_seq_params`) and per-sequence tensors."""
    if not seqs:
        return []
    rows = pack_rows(seqs, budget)
    row_len = max(sum(seqs[i].length for i in row) for row in rows)
    row_len = -(-row_len // pad_multiple) * pad_multiple
    out = []
    for row in rows:
        t_max = max(len(seqs[i].response_ids) for i in row)
        # Built as Python lists (one tensor per field, not per sequence): token ids, next-token
        # labels, positions restarting at 0, and the segment lengths.
        ids, labels, pos, lengths = [], [], [], []
        resp_index, resp_len = [], []
        for i in row:
            s = seqs[i]
            tokens = s.prompt_ids + s.response_ids
            n, p, k = len(tokens), len(s.prompt_ids), len(s.response_ids)
            at = len(ids) + p - 1  # the position predicting the first response token
            resp_index.append(list(range(at, at + k)) + [0] * (t_max - k))
            resp_len.append(k)
            ids += tokens
            labels += tokens[1:] + [0]
            pos += range(n)
            lengths.append(n)
        pad = row_len - len(ids)
        lengths += padding_segments(pad, max(lengths))
        ids, labels, pos = ([x + [0] * pad] for x in (ids, labels, pos))
        ids, labels, pos = (torch.tensor(x, dtype=torch.long) for x in (ids, labels, pos))
        routes = _packed_routes([seqs[i] for i in row], row_len)
        resp_index = torch.tensor(resp_index, dtype=torch.long)
        resp_mask = torch.arange(t_max).unsqueeze(0) < torch.tensor(resp_len).unsqueeze(1)
        if any(seqs[i].loss_mask is not None for i in row):  # tool tokens: context, never predicted
            resp_mask &= per_sequence_matrix([seqs[i].loss_mask if seqs[i].loss_mask is not None else [1] * k
                                              for i, k in zip(row, resp_len)], t_max, "cpu") > 0
        # The response-predicting positions alone: `resp_flat` (into [B * T]), their position in
        # the row (`logit_index`, Megatron's s-major [s, 1] layout) and their labels.
        resp_flat = resp_mask.reshape(-1).nonzero().squeeze(1)
        flat = resp_index.reshape(-1)[resp_flat]
        out.append(MicroBatch(
            input_ids=ids.to(device),
            position_ids=pos.to(device),
            labels=labels.to(device),
            resp_index=resp_index.to(device),
            resp_mask=resp_mask.to(device),
            resp_flat=resp_flat.to(device),
            logit_index=flat.to(device),
            logit_labels=labels.reshape(-1)[flat].to(device),
            packed_seq_params=packed_seq_params(lengths, device),
            seq_ids=list(row),
            num_tokens=sum(seqs[i].length for i in row),
            routes=None if routes is None else routes.to(device),
        ))
    return out


def _packed_routes(row: Sequence[TrainSequence], row_len: int) -> torch.Tensor | None:
    """The row's routes [1, row_len, moe_layers x top_k] (-1 for padding and unknown tokens), when
    any sequence carries them (routing replay)."""
    from megarl.rollout import routed_experts

    carried = [s for s in row if s.routes is not None]
    if not carried:
        return None
    width = len(base64.b64decode(carried[0].routes)) // 4 // carried[0].length
    parts = [routed_experts.per_token(s.routes, s.length, width) for s in row]
    out = torch.full((1, row_len, width), -1, dtype=torch.int32)
    used = sum(p.shape[0] for p in parts)
    out[0, :used] = torch.cat(parts)
    return out


def padding_segments(pad: int, longest: int) -> list[int]:
    """Lengths of the segments covering `pad` padding tokens, none longer than `longest` (so the
    padding never raises the row's longest segment, which bounds the attention cost)."""
    longest = max(longest, 1)
    return [longest] * (pad // longest) + ([pad % longest] if pad % longest else [])


def packed_seq_params(lengths: Sequence[int], device):
    """THD `PackedSeqParams` for one packed row made of segments of `lengths` tokens (sequences,
    then padding): the cumulative lengths end at the row's token count."""
    from megatron.core.packed_seq_params import PackedSeqParams

    if not lengths or min(lengths) < 1:
        raise ValueError(f"segment lengths {list(lengths)} must be positive and non-empty")
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)
    longest = max(lengths)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)


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


@dataclasses.dataclass(frozen=True)
class Packer:
    """Packs sequences into this run's micro-batches: `micro_batch_tokens` per row, rows padded to a
    multiple of 8 and of TP (sequence parallelism splits every row over the TP ranks)."""

    budget: int
    device: torch.device
    pad_multiple: int = 8

    def __call__(self, seqs: Sequence[TrainSequence]) -> list[MicroBatch]:
        return build_microbatches(seqs, self.budget, self.device, pad_multiple=self.pad_multiple)

    def stand_in(self) -> list[MicroBatch]:
        """One empty micro-batch, for a rank with no sequences in a mini-batch (it still takes part in
        the optimizer step, so all ranks stay in lockstep); its loss is zero."""
        mb = build_microbatches([TrainSequence(prompt_ids=[0], response_ids=[0], reward=0.0, group=0)], 8, self.device,
                                pad_multiple=self.pad_multiple)[0]
        return [dataclasses.replace(mb, empty=True)]
