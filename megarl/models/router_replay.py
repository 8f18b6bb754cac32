"""Routing replay ("R3") for MoE actors: training routes each token to the experts the rollout chose.

Routes travel as one integer tensor per sample, `[tokens, moe_layers, top_k]`: for token t (a
position of prompt + response) and the i-th MoE layer (`spec.moe_layers[i]`), the experts that
routed it, -1 where unknown (SGLang does not route the last token of a sequence, which no loss
reads). A micro-batch carries them aligned with its input ids (`[b, s, moe_layers, top_k]`, or
`[1, T, ...]` for a THD-packed row).

Megatron's TopKRouter asks its `router_replay` object for the top-k (megatron-core 0.16's
RouterReplay hook, megatron/core/transformer/moe/router_replay.py). megarl installs one `LayerReplay`
per router (a RouterReplay without the process-global registry, so the actor, the reference model and
tests can hold several models) that, per forward of a micro-batch:
- with replay on, routes by the targets (the router's scores gathered at them, then normalized as
  the router does), keeping the router's own choice where a target is -1;
- compares what it routed with the targets: the fraction of routed slots whose expert is not among
  the rollout's is `moe/router_mismatch` (0 with replay); the same for the router's own top-k is
  `moe/router_drift` (how far training's routing has moved from the rollout's, replay or not);
- counts tokens per expert for the load-balance metrics.
Under full recomputation the layer's forward runs again inside backward; the targets pushed for
each micro-batch are replayed there in the same order (1F1B runs backwards in forward order).
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class RouteStats:
    """Per-layer counters since the last `reset` (forward passes only, not recomputation)."""

    mismatched: int = 0  # routed slots whose expert the rollout did not choose
    drifted: int = 0  # slots where the router's own choice differs from the rollout's (replay or not)
    compared: int = 0  # routed slots with a rollout target
    tokens_per_expert: torch.Tensor | None = None


def replays_routes(setting: bool | None, spec) -> bool:
    """Whether a run replays the rollout's routes: `actor.router_replay` (None: on for MoE models)."""
    return bool(spec.is_moe) and setting is not False


def _in_backward() -> bool:
    """Whether autograd is running a backward pass now (a recomputed forward inside it)."""
    return torch._C._current_graph_task_id() != -1


class LayerReplay:
    """One MoE layer's routing: replays pushed targets, records what it routed, counts mismatches.
    Answers the router's `router_replay.get_replay_topk` call as megatron's RouterReplay does, without
    its process-global registry of instances."""

    def __init__(self, num_experts: int, recompute: bool):
        self.num_experts = num_experts
        self.recompute = recompute
        self.replay = True
        self.forward_targets: list[torch.Tensor | None] = []
        self.backward_targets: list[torch.Tensor | None] = []
        self.recorded: list[torch.Tensor] = []
        self.record = False
        self.stats = RouteStats()

    def get_replay_topk(self, scores, topk, num_groups=None, group_topk=None, default_compute_topk=None):
        if _in_backward() and self.recompute:
            target = self.backward_targets.pop(0) if self.backward_targets else None
            return self._route(scores, topk, num_groups, group_topk, default_compute_topk, target, count=False)
        target = self.forward_targets.pop(0) if self.forward_targets else None
        if self.recompute:
            self.backward_targets.append(target)
        return self._route(scores, topk, num_groups, group_topk, default_compute_topk, target, count=True)

    def _route(self, scores, topk, num_groups, group_topk, compute_topk, target, count: bool):
        values, natural = compute_topk(scores, topk, num_groups=num_groups, group_topk=group_topk)
        chosen = natural
        if target is not None:
            target = target.to(device=scores.device, dtype=torch.long)
            if target.shape != natural.shape:
                raise ValueError(f"routing replay: routes for {tuple(target.shape)} slots, the router has {tuple(natural.shape)}; "
                                 "the routes do not match the micro-batch's tokens")
            known = (target >= 0).all(dim=-1, keepdim=True)
            if self.replay:
                chosen = torch.where(known, target, natural)
                values = scores.gather(1, chosen)
            if count:
                self.stats.mismatched += _missed(chosen, target, known)
                self.stats.drifted += _missed(natural, target, known)
                self.stats.compared += int(known.sum()) * topk
        if count:
            if self.record:
                self.recorded.append(chosen.detach().clone())
            counts = torch.bincount(chosen.reshape(-1), minlength=self.num_experts).cpu()
            self.stats.tokens_per_expert = counts if self.stats.tokens_per_expert is None else self.stats.tokens_per_expert + counts
        return values, chosen


def _missed(chosen: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> int:
    """Slots of `chosen` ([tokens, k]) whose expert is not among the token's targets (known rows only)."""
    hit = (chosen.unsqueeze(-1) == target.unsqueeze(-2)).any(-1)
    return int(((~hit) & known).sum())


def layer_replays(model) -> list[tuple[int, LayerReplay]]:
    """(global layer index, replay) of this model chunk's MoE layers, in layer order."""
    from megarl.models.unwrap import unwrap_model

    module = unwrap_model(model)
    out = []
    for layer in module.decoder.layers:
        router = getattr(layer.mlp, "router", None)
        if router is not None and isinstance(router.router_replay, LayerReplay):
            out.append((layer.layer_number - 1, router.router_replay))
    return out


def install(model, recompute: bool) -> None:
    """Give every MoE router of a freshly built model a LayerReplay (see the module docstring)."""
    for layer in model.decoder.layers:
        router = getattr(layer.mlp, "router", None)
        if router is not None:
            router.router_replay = LayerReplay(router.config.num_moe_experts, recompute)


def set_replay(model, enabled: bool) -> None:
    """Route by the rollout's experts (True) or by the router's own choice, still comparing (False)."""
    for _, replay in layer_replays(model):
        replay.replay = enabled


def push_routes(model, routes: torch.Tensor | None) -> None:
    """Queue one micro-batch's routes ([b, s, moe_layers, top_k] or [b, s, moe_layers * top_k]
    aligned with its input ids; None:
    no targets) for the next forward of this model chunk. Under sequence parallelism each TP rank's
    routers see its slice of the sequence, which is what they get."""
    replays = layer_replays(model)
    if not replays:
        return
    if routes is None:
        for _, replay in replays:
            replay.forward_targets.append(None)
        return
    from megatron.core import parallel_state as ps

    spec = model_spec(model)
    b, s = routes.shape[:2]
    routes = routes.reshape(b, s, len(spec.moe_layers), spec.moe_top_k).transpose(0, 1)  # Megatron's [s, b] token order
    if _sequence_parallel(model):
        tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
        routes = routes.chunk(tp, dim=0)[rank]
    for layer, replay in replays:
        slot = spec.moe_layers.index(layer)
        replay.forward_targets.append(routes[:, :, slot, :].reshape(-1, routes.shape[-1]))


def clear_queues(model) -> None:
    """Drop targets no forward or recompute took (a forward-only pass leaves its recompute queue
    unread): called at the start of every pipeline pass."""
    for _, replay in layer_replays(model):
        replay.forward_targets.clear()
        replay.backward_targets.clear()


def start_recording(model) -> None:
    for _, replay in layer_replays(model):
        replay.record = True
        replay.recorded.clear()


def recorded_routes(model) -> list[torch.Tensor]:
    """What each MoE layer of this chunk routed, per forward since `start_recording` ([s*b, top_k]
    in Megatron's token order), as a list over forwards of [tokens, layers, top_k]."""
    replays = layer_replays(model)
    per_forward = zip(*[replay.recorded for _, replay in replays])
    return [torch.stack(layers, dim=1) for layers in per_forward]


def reset(model) -> None:
    """Drop queued targets and counters (between passes)."""
    for _, replay in layer_replays(model):
        replay.forward_targets.clear()
        replay.backward_targets.clear()
        replay.recorded.clear()
        replay.record = False
        replay.stats = RouteStats()


def metrics(model) -> dict[str, float]:
    """moe/router_mismatch (over every compared slot of this chunk's layers) and, per layer, the load
    imbalance max/mean tokens per expert (1.0 = perfectly balanced)."""
    out: dict[str, float] = {}
    mismatched = drifted = compared = 0
    for layer, replay in layer_replays(model):
        mismatched += replay.stats.mismatched
        drifted += replay.stats.drifted
        compared += replay.stats.compared
        counts = replay.stats.tokens_per_expert
        if counts is not None and counts.sum() > 0:
            out[f"moe/load_imbalance/layer{layer}"] = float(counts.max() / counts.float().mean())
    if compared:
        out["moe/router_mismatch"] = mismatched / compared
        out["moe/router_drift"] = drifted / compared
    return out


def step_metrics(model) -> dict[str, float]:
    """`metrics` over every rank's layers and tokens (a collective: every rank calls it), then
    `reset`: the step's MoE metrics from its log-prob and update passes."""
    from megarl.runtime import collectives

    mine = [(layer, r.stats.mismatched, r.stats.drifted, r.stats.compared, r.stats.tokens_per_expert)
            for layer, r in layer_replays(model)]
    reset(model)
    mismatched = drifted = compared = 0
    per_layer: dict[int, torch.Tensor] = {}
    for rank_stats in collectives.all_gather_objects(mine):
        for layer, m, d, c, counts in rank_stats:
            mismatched, drifted, compared = mismatched + m, drifted + d, compared + c
            if counts is not None:
                per_layer[layer] = counts if layer not in per_layer else per_layer[layer] + counts
    out = {f"moe/load_imbalance/layer{layer}": float(c.max() / c.float().mean())
           for layer, c in sorted(per_layer.items()) if c.sum() > 0}
    if compared:
        out["moe/router_mismatch"] = mismatched / compared
        out["moe/router_drift"] = drifted / compared
    return out


def model_spec(model):
    from megarl.models.unwrap import unwrap_model

    return unwrap_model(model).megarl_spec


def _sequence_parallel(model) -> bool:
    from megarl.models.unwrap import unwrap_model

    return bool(unwrap_model(model).config.sequence_parallel)
