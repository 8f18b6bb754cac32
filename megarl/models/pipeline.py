"""Runs forward (and backward) over micro-batches through Megatron's pipeline schedule.

One call serves every layout: with PP > 1 Megatron's 1F1B schedule moves activations between
stages; with PP = 1 it is a plain loop with gradient accumulation. Micro-batches share one
shape [micro_batch_size, seq_length] (pad to it), which is what pipeline p2p requires.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch


@dataclasses.dataclass(kw_only=True)
class ModelInput:
    """What the model's forward reads from one micro-batch ([b, s] token ids and positions)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None = None  # next-token labels [b, s]
    packed_seq_params: object | None = None  # THD segments (megatron PackedSeqParams); None: plain causal rows
    attention_mask: torch.Tensor | None = None
    logit_index: torch.Tensor | None = None  # actor: the only row positions whose logits the step reads
    logits_selected: bool = False  # set by run_pipeline: the output holds only the logit_index positions
    routes: torch.Tensor | None = None  # MoE: the rollout's experts [b, s, moe_layers, top_k] (-1: unknown), replayed


def run_pipeline(
    model,
    microbatches: Sequence[ModelInput],
    step_fn: Callable[[torch.Tensor, ModelInput], tuple[torch.Tensor, dict]],
    *,
    forward_only: bool,
) -> list[dict]:
    """Forward every micro-batch; `step_fn(output, microbatch) -> (loss, stats)` runs on the last
    stage (output: logits [b, s, V/tp] for the actor, or [1, n, V/tp] at the micro-batch's
    `logit_index` positions when it has one (then `mb.logits_selected` is True); values
    [b, s, 1] for the critic).

    Returns the stats dicts of the last stage's micro-batches (empty on other stages). Megatron
    divides each loss by the number of micro-batches before backward; `step_fn` returns the
    per-micro-batch loss.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not microbatches:
        raise ValueError("run_pipeline needs at least one micro-batch")
    shape = tuple(microbatches[0].input_ids.shape)
    for i, mb in enumerate(microbatches):
        if tuple(mb.input_ids.shape) != shape:
            raise ValueError(f"micro-batch {i} has shape {tuple(mb.input_ids.shape)}, expected {shape}; pad to one shape")
    micro_batch_size, seq_length = shape

    from megarl.models import router_replay
    from megarl.models.logit_positions import only_positions, supports_position_selection
    from megarl.models.unwrap import unwrap_model

    def forward_step(data_iterator, module):
        mb = next(data_iterator)
        extra = {"packed_seq_params": mb.packed_seq_params} if mb.packed_seq_params is not None else {}
        # Actor: logits only at the positions the step reads (mb.logit_index), when the model can.
        select = mb.logit_index if supports_position_selection(module) else None
        if getattr(unwrap_model(module).megarl_spec, "is_moe", False):
            router_replay.push_routes(module, mb.routes)
        with only_positions(select):
            output = module(mb.input_ids, mb.position_ids, mb.attention_mask, **extra)
        mb.logits_selected = select is not None

        def loss_func(output_tensor):
            loss, stats = step_fn(output_tensor, mb)
            return loss, stats

        return output, loss_func

    for chunk in model:
        if getattr(unwrap_model(chunk).megarl_spec, "is_moe", False):
            router_replay.clear_queues(chunk)
    forward_backward = get_forward_backward_func()
    return forward_backward(
        forward_step_func=forward_step,
        data_iterator=iter(microbatches),
        model=model,
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
