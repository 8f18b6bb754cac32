"""Routed experts from the rollout (routing replay, R3): SGLang's wire format and the built-in
server's recorder.

SGLang 0.5.23 returns, for a generate request with `return_routed_experts: true`, the experts
each token was routed to as `meta_info["routed_experts"]`: base64 of a C-order int32 array
[seqlen - 1 - routed_experts_start_len, num_hidden_layers, num_experts_per_tok] covering positions
[start_len, seqlen - 1) of prompt + output (the last output token is never run through the model).
See sglang/srt/state_capturer/routed_experts.py (`extract_routed_experts_from_meta_info`) and
managers/tokenizer_manager.py. The built-in server returns the same (rows of dense layers -1).

A sample's routes for training are `[prompt + response tokens, moe_layers, top_k]` int32, -1 where
unknown: the MoE layers' rows of SGLang's array, and -1 for the last token.
"""

from __future__ import annotations

import base64

import numpy as np
import torch


def encode(routes: np.ndarray) -> str:
    """SGLang's encoding of a routed-experts array (int32, C order, base64)."""
    return base64.b64encode(np.ascontiguousarray(routes, dtype=np.int32).tobytes()).decode("utf-8")


def decode(meta_info: dict, num_layers: int, top_k: int) -> np.ndarray:
    """The [tokens, num_layers, top_k] int32 array of a response's meta_info (a clear error when absent)."""
    data = meta_info.get("routed_experts")
    if data is None:
        raise ValueError("the rollout server returned no meta_info.routed_experts; it must run with "
                         "--enable-return-routed-experts (SGLang) for routing replay, or set actor.router_replay=false")
    flat = np.frombuffer(base64.b64decode(data), dtype=np.int32)
    if flat.size % (num_layers * top_k):
        raise ValueError(f"routed_experts holds {flat.size} ids, not a multiple of layers x top_k = {num_layers} x {top_k}; "
                         "the server runs another model")
    return flat.reshape(-1, num_layers, top_k)


def sample_routes(routed: np.ndarray, moe_layers, length: int, start_len: int = 0) -> torch.Tensor:
    """A training sample's routes [length, len(moe_layers), top_k] from SGLang's array, which covers
    positions [start_len, length - 1); the rows it does not cover are -1."""
    out = torch.full((length, len(moe_layers), routed.shape[-1]), -1, dtype=torch.int32)
    rows = min(routed.shape[0], length - start_len)
    out[start_len:start_len + rows] = torch.from_numpy(np.array(routed[:rows][:, list(moe_layers)], dtype=np.int32))
    return out


def per_token(encoded: str | None, length: int, width: int) -> torch.Tensor:
    """A sample's routes ([length, width] int32, width = moe_layers x top_k) from their `encode`d
    form (how a TrainSequence carries them, JSON-safe); all -1 when the sample has none."""
    if encoded is None:
        return torch.full((length, width), -1, dtype=torch.int32)
    flat = torch.from_numpy(np.frombuffer(base64.b64decode(encoded), dtype=np.int32).copy())
    if flat.numel() != length * width:
        raise ValueError(f"a sample's routes hold {flat.numel()} ids, expected {length} tokens x {width}")
    return flat.view(length, width)


def from_sample(meta_info: dict, spec, length: int) -> str:
    """A training sample's routes, `encode`d, from a rollout response's meta_info (SGLang's format)."""
    routed = decode(meta_info, spec.num_layers, spec.moe_top_k)
    return encode(sample_routes(routed, spec.moe_layers, length).numpy())


class HFRouteRecorder:
    """Records the top-k experts of every MoE layer of a transformers model per forward (hooks on
    the routers: Qwen3-MoE's `mlp.gate` returns (logits, scores, indices))."""

    def __init__(self, model):
        config = model.config
        self.num_layers = int(config.num_hidden_layers)
        self.top_k = int(getattr(config, "num_experts_per_tok", 0) or 0)
        self._captured: dict[int, torch.Tensor] = {}
        self._handles = []
        for index, layer in enumerate(model.model.layers):
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None and hasattr(layer.mlp, "experts"):
                self._handles.append(gate.register_forward_hook(self._hook(index)))

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _hook(self, index: int):
        def hook(module, args, output):
            self._captured[index] = output[2].detach().to(torch.int32)

        return hook

    def take(self, batch: int, seq: int) -> torch.Tensor:
        """This forward's routes [batch, seq, num_hidden_layers, top_k] (-1 for dense layers)."""
        out = torch.full((batch, seq, self.num_layers, self.top_k), -1, dtype=torch.int32)
        for index, ids in self._captured.items():
            out[:, :, index] = ids.reshape(batch, seq, self.top_k).cpu()
        self._captured.clear()
        return out
