"""Logits only where the RL loss reads them: the positions that predict response tokens.

The actor's LM head is the largest matmul of a small model's step and the largest activation of
a large one ([tokens, vocab / tp]); prompt positions need no logits. Inside
`only_positions(index)`, a forward pre-hook on the actor's output layer keeps the hidden states
at the flat [s * b] positions in `index` (s-major, as Megatron lays out [s, b, h]), so the model
returns logits [1, n, V / tp] for those positions in that order. Gradients flow back to the full
hidden states through the selection.

Not used with sequence parallelism (the output layer gathers the sequence-sharded hidden states
itself, after this hook); `supports_position_selection(model)` says whether a model has the hook.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from megarl.models.unwrap import unwrap_model

_POSITIONS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("megarl_logit_positions", default=None)


@contextlib.contextmanager
def only_positions(index: torch.Tensor | None):
    token = _POSITIONS.set(index)
    try:
        yield
    finally:
        _POSITIONS.reset(token)


def _select_hidden(module, args, kwargs):
    index = _POSITIONS.get()
    if index is None:
        return None
    hidden = args[0]  # [s, b, h]
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index).unsqueeze(1)  # [n, 1, h]
    return (picked, *args[1:]), kwargs


def install(model) -> None:
    """Add the selection hook to an actor's output layer (last pipeline stage, no sequence
    parallelism); other models are left as they are."""
    layer = getattr(model, "output_layer", None)
    if layer is None or getattr(model.config, "sequence_parallel", False):
        return
    layer.register_forward_pre_hook(_select_hidden, with_kwargs=True)
    model.megarl_selects_logits = True


def supports_position_selection(model) -> bool:
    return bool(getattr(unwrap_model(model), "megarl_selects_logits", False))
