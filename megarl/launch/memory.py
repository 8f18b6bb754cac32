"""Per-GPU memory estimate of a training job (trainer ranks and rollout servers), before it is submitted.

`estimate_memory(cfg, spec, layout, gpu_gib)` adds up, for the most loaded trainer rank:

    weights      params on the rank x 2 bytes (bf16/fp16; fp32: 4). The rank holds 1/tp of every
                 sharded matrix of its pp stage's layers, plus the embedding (first stage) and the
                 output layer (last stage; with tied embeddings and pp > 1 a copy), plus norms.
                 Mixture of experts (megarl.model_configs.experts): a MoE layer's attention is sharded
                 by tp as above, its router (num_experts x h) is replicated on every TP rank, and its
                 experts (num_experts x 3 h f_expert) are split over ep ranks, each expert whole
                 (expert_tensor_parallel_size 1): num_experts / ep of them per rank. The layer count
                 agrees with Megatron-LM's megatron/training/theoretical_memory_usage.py
                 (NVIDIA/Megatron-LM@00caa53: 2 h (E f x 3/2 + shared f x 3/2 + norms) + attention per
                 MoE layer), which leaves out the router and divides the most loaded shard by TP only,
                 not by EP; the EP split here is megatron-core's expert groups (below).
    gradients    params x 4 bytes (Megatron DDP keeps fp32 main grads: grad_reduce_in_fp32).
    optimizer    params x 12 bytes (fp32 master copy, Adam m and v), / dp with the distributed
                 optimizer, 0 on the GPU when offloaded to the CPU (then it is listed as host RAM):
                 the "6 + 12/d bytes per parameter" of megatron-core's distributed-optimizer guide
                 (docs.nvidia.com/megatron-core/developer-guide/latest/distrib_optimizer.html, bf16
                 params with fp32 grads). Expert params are sharded over their own, smaller group:
                 megatron-core's DDP reduces them over the expert data-parallel group
                 (distributed/distributed_data_parallel.py, `expt_dp_group`), of world / (ep x pp)
                 = tp x dp / ep ranks (parallel_state.initialize_model_parallel, 0.16.1).
    activations  the stage's layers x the micro-batches in flight (1F1B: up to pp on the first stage),
                 per layer and token (Korthikanti et al. 2022, "Reducing Activation Recomputation",
                 with flash/varlen attention, so no s^2 term): 34 h / tp bytes with sequence
                 parallelism, (10 + 24 / tp) h without; full recompute keeps only each layer's
                 input (2 h, / tp with sequence parallelism) plus one layer's working set;
                 plus the logits of one micro-batch (V / tp x 2 bytes, and their gradient).
                 A MoE layer keeps the paper's attention and norm terms (15 h / tp with sequence
                 parallelism, 7 h + 8 h / tp without) and, instead of its dense MLP, for each token
                 the rank dispatches (1/tp of them with sequence parallelism): the MLP input and
                 dropout mask (3 h), the router's fp32 logits and probabilities (8 x num_experts) and,
                 for each of its top-k experts, the permuted input and the combine's input (4 h) and
                 the expert's SwiGLU (fc1 output 4 f, its activation 2 f); routing assumed balanced,
                 so each EP rank computes about tokens x k expert rows whatever ep is.
    reference    the frozen reference policy's weights when the KL is a loss (kl_coef > 0).
    critic       PPO's critic at its own layout: weights, gradients, optimizer, activations.
    weight sync  the bucket buffers one push keeps alive at once on trainer rank 0 (`weight_sync.sync_peak_bytes`),
                 every expert included:
                 the whole model in the model dtype for `tensor` on GPUs (kept until the update session ends),
                 one bucket (max(rollout.bucket_mb, the largest tensor)) for `distributed`, none for `disk`;
                 plus, on GPUs, the gathered tensors of the bucket being packed (one bucket). Released after
                 every push; counted in the trainer's peak, which it joins at the sync.
    overhead     CUDA context, NCCL buffers and allocator fragmentation: 3 GiB + 5%.

and for a rollout server GPU: SGLang's static pool (`--mem-fraction-static` x GPU memory: the
weights, 1/server_tp of them, and the KV cache) plus about 2 GiB for activations and CUDA graphs;
the KV cache then holds (pool - weights) / (2 x layers x kv_heads/server_tp x head_dim x 2 bytes)
tokens. Colocated jobs put both on the same GPUs: the trainer's weights, gradients and optimizer
stay resident while SGLang generates unless they are offloaded.

These are estimates (what a rank allocates, not what the allocator reserves); `check_fits` refuses a
layout whose estimate passes the GPU's memory less 10% headroom and names the first fix that works.
"""

from __future__ import annotations

import dataclasses
import math

from megarl.config import Config
from megarl.launch.layout import JobLayout, LaunchError
from megarl.model_configs.experts import EXPERT_TP, Experts, ep_choices, expert_data_parallel
from megarl.rollout.engines import get_engine

GIB = 1024**3
HEADROOM = 0.10  # keep this fraction of each GPU free
OVERHEAD_BYTES = 3 * GIB
OVERHEAD_FRACTION = 0.05
SERVER_WORKSPACE_BYTES = 2 * GIB
# SGLang sizes its static pool itself on GPUs it does not share; assumed this fraction of the GPU.
# Colocated servers use rollout.mem_fraction_static from the recipe.
DEDICATED_SERVER_FRACTION = 0.85
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclasses.dataclass(frozen=True)
class Shape:
    """The dimensions the estimate needs (from megarl.models.spec.ModelSpec, and the config's experts)."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    experts: int = 0  # routed experts of a MoE layer (0: dense)
    top_k: int = 0
    expert_ffn: int = 0
    moe_layers: frozenset[int] = frozenset()
    shared_ffn: int = 0  # Qwen2-MoE's shared expert

    @classmethod
    def of(cls, spec, experts: Experts | None = None) -> "Shape":
        moe = {} if experts is None else dict(
            experts=experts.num_experts, top_k=experts.top_k, expert_ffn=experts.ffn_hidden_size,
            moe_layers=frozenset(experts.moe_layers), shared_ffn=experts.shared_ffn_hidden_size)
        return cls(spec.hidden_size, spec.ffn_hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads,
                   spec.head_dim, spec.vocab_size, spec.tie_word_embeddings, spec.qkv_bias, **moe)

    def _attention_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (q + 2 * kv) + q * self.hidden + ((q + 2 * kv) if self.qkv_bias else 0)

    def layer_params(self) -> tuple[int, int]:
        """(params sharded by TP, params replicated on every TP rank) of one dense transformer layer."""
        return self._attention_params() + 3 * self.hidden * self.ffn, 2 * self.hidden

    def layer_split(self, layer: int) -> tuple[int, int, int]:
        """(sharded by TP, replicated on every TP rank, routed experts split by EP) of layer `layer`."""
        if layer not in self.moe_layers:
            return (*self.layer_params(), 0)
        sharded = self._attention_params() + 3 * self.hidden * self.shared_ffn
        replicated = 2 * self.hidden + self.experts * self.hidden + (self.hidden if self.shared_ffn else 0)  # norms, router, shared gate
        return sharded, replicated, self.experts * 3 * self.hidden * self.expert_ffn

    def total_params(self) -> int:
        body = sum(sum(self.layer_split(i)) for i in range(self.layers))
        return body + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


@dataclasses.dataclass(frozen=True)
class Row:
    component: str
    gib: float
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Estimate:
    gpu_gib: float
    trainer: list[Row]
    server: list[Row]
    host: list[Row]
    colocated: bool
    kv_tokens: int | None
    max_sequence_tokens: int

    @property
    def trainer_gib(self) -> float:
        return sum(r.gib for r in self.trainer)

    @property
    def server_gib(self) -> float:
        return sum(r.gib for r in self.server)

    @property
    def peak_gib(self) -> float:
        """Per GPU: the trainer's rank, a server's GPU, or both on one GPU when colocated."""
        if self.colocated:
            return self.trainer_gib + self.server_gib
        return max(self.trainer_gib, self.server_gib)

    @property
    def budget_gib(self) -> float:
        return self.gpu_gib * (1 - HEADROOM)

    def table(self) -> str:
        lines = [f"per-GPU memory estimate (GPU {self.gpu_gib:.0f} GiB, keep {HEADROOM:.0%} free: budget {self.budget_gib:.1f} GiB)",
                 "| where | component | GiB | note |", "|---|---|---|---|"]
        for where, rows in (("trainer", self.trainer), ("server", self.server), ("host RAM", self.host)):
            lines += [f"| {where} | {r.component} | {r.gib:.1f} | {r.note} |" for r in rows]
        lines.append(f"| trainer | total | {self.trainer_gib:.1f} | most loaded rank |")
        if self.server:
            lines.append(f"| server | total | {self.server_gib:.1f} | per server GPU |")
        peak_note = "trainer + server on the same GPU" if self.colocated else "largest of trainer and server"
        lines.append(f"| peak | per GPU | {self.peak_gib:.1f} | {peak_note} |")
        if self.kv_tokens is not None:
            per_seq = self.kv_tokens // max(1, self.max_sequence_tokens)
            lines.append(f"KV cache: about {self.kv_tokens:,} tokens per server = {per_seq} sequences of "
                         f"{self.max_sequence_tokens:,} tokens (prompt + response) at once")
        return "\n".join(lines)


def _stage_params(shape: Shape, tp: int, pp: int, ep: int, stage: int) -> tuple[int, int]:
    """(params outside the experts, expert params) on a rank of pipeline stage `stage`."""
    per_stage = shape.layers // pp
    dense = expert = 0
    for layer in range(stage * per_stage, (stage + 1) * per_stage):
        sharded, replicated, experts = shape.layer_split(layer)
        dense += sharded // tp + replicated
        expert += experts // (ep * EXPERT_TP)
    embed = shape.vocab * shape.hidden // tp
    if pp == 1:
        dense += embed * (1 if shape.tied else 2) + shape.hidden
    elif stage == 0:  # first stage: embedding; last: output layer (a copy of the embedding when tied) + final norm
        dense += embed
    elif stage == pp - 1:
        dense += embed + shape.hidden
    return dense, expert


def _rank_split(shape: Shape, tp: int, pp: int, ep: int = 1) -> tuple[int, int]:
    """(params outside the experts, expert params) on the most loaded rank."""
    return max((_stage_params(shape, tp, pp, ep, stage) for stage in range(pp)), key=sum)


def _rank_params(shape: Shape, tp: int, pp: int, ep: int = 1) -> int:
    """Params on the most loaded rank: a stage's layers, plus embedding and/or output layer."""
    return sum(_rank_split(shape, tp, pp, ep))


def _layer_activations(shape: Shape, layer: int, tokens: int, tp: int, sp: bool) -> float:
    """Bytes one layer keeps for the backward pass (no recompute); see the module docstring."""
    h = shape.hidden
    if layer not in shape.moe_layers:
        return tokens * h * (34 / tp if sp else 10 + 24 / tp)
    attention = tokens * h * (15 / tp if sp else 7 + 8 / tp)
    dispatched = tokens / tp if sp else tokens
    routed = dispatched * (3 * h + 8 * shape.experts + shape.top_k * (4 * h + 6 * shape.expert_ffn))
    shared = tokens * 6 * shape.shared_ffn / tp
    return attention + routed + shared


def _activations(shape: Shape, tokens: int, tp: int, pp: int, sp: bool, recompute: str | None, n_mb: int) -> float:
    h = shape.hidden
    layers = range(shape.layers // pp)  # the first stage: the most micro-batches in flight
    per_layer = [_layer_activations(shape, layer, tokens, tp, sp) for layer in layers]
    if recompute == "full":
        stored = tokens * h * 2 / (tp if sp else 1)
        per_mb = len(per_layer) * stored + max(per_layer)
    else:
        per_mb = sum(per_layer)
    in_flight = max(1, min(pp, n_mb))
    logits = tokens * (shape.vocab / tp) * 2 * 2
    return in_flight * per_mb + logits


def _model_rows(label: str, shape: Shape, par, dtype_bytes: int, dp: int, tokens: int, n_mb: int, host: list[Row]) -> list[Row]:
    dense, expert = _rank_split(shape, par.tp, par.pp, par.ep)
    params = dense + expert
    where = f"TP {par.tp}, PP {par.pp}" + (f", EP {par.ep}: {expert / 1e9:.2f}B of them experts" if shape.experts else "")
    rows = [Row(f"{label} weights", params * dtype_bytes / GIB, f"{params / 1e9:.2f}B params on the rank ({where})"),
            Row(f"{label} gradients", params * 4 / GIB, "fp32 main grads")]
    if par.distributed_optimizer:
        expert_dp = expert_data_parallel(par.tp, dp, par.ep)
        opt_bytes = dense * 12 / dp + expert * 12 / expert_dp
        how = f"fp32 master + Adam m, v, / DP {dp}" + (f" (experts / expert DP {expert_dp})" if shape.experts else "")
    else:
        opt_bytes, how = params * 12, "fp32 master + Adam m, v"
    if getattr(par, "optimizer_offload", False):
        host.append(Row(f"{label} optimizer (offloaded)", opt_bytes / GIB, how + ", per rank"))
    else:
        rows.append(Row(f"{label} optimizer", opt_bytes / GIB, how))
    recompute = par.recompute
    routing = f", top-{shape.top_k} of {shape.experts} experts" if shape.experts else ""
    rows.append(Row(f"{label} activations", _activations(shape, tokens, par.tp, par.pp, par.sequence_parallel, recompute, n_mb) / GIB,
                    f"{tokens:,} tokens per micro-batch, recompute={recompute or 'none'}, "
                    f"sequence parallel {'on' if par.sequence_parallel and par.tp > 1 else 'off'}{routing}"))
    return rows


def _sync_row(cfg: Config, shape: Shape, dtype_bytes: int, layout: JobLayout) -> Row | None:
    """The weight-sync buckets trainer rank 0 holds at once during a push (peak sync memory)."""
    from megarl.rollout.weight_sync import sync_peak_bytes

    rc = cfg.rollout
    largest = shape.vocab * shape.hidden * dtype_bytes  # the embedding / output layer, sent whole
    buffers = sync_peak_bytes(rc.transport, bucket_bytes=rc.bucket_mb << 20, largest_tensor_bytes=largest,
                              model_bytes=shape.total_params() * dtype_bytes, gpu=layout.on_gpu)
    pending = max(rc.bucket_mb << 20, largest) if layout.on_gpu else 0  # gathered tensors of the bucket being packed
    if not buffers + pending:
        return None
    how = {"tensor": "every bucket kept until the update session ends", "distributed": "one bucket at a time",
           "disk": "written to host memory"}[rc.transport]
    return Row("weight sync", (buffers + pending) / GIB,
               f"rank 0 during a push ({rc.transport}: {how}) plus the gathered tensors of one bucket")


def estimate_memory(cfg: Config, spec, layout: JobLayout, gpu_gib: float, experts: Experts | None = None) -> Estimate:
    """The per-GPU estimate for `cfg` at `layout` on GPUs of `gpu_gib` GiB (`experts`: a MoE model's,
    from `Experts.from_hf`; None for a dense model)."""
    shape = Shape.of(spec, experts)
    dtype_bytes = DTYPE_BYTES[cfg.model.dtype]
    rc, a = cfg.rollout, cfg.algorithm
    samples = cfg.data.prompts_per_step * rc.n
    max_seq = cfg.data.max_prompt_tokens + rc.max_new_tokens
    tokens = cfg.actor.micro_batch_tokens
    n_mb = max(1, math.ceil(samples * max_seq / max(1, layout.dp) / a.mini_batches / tokens))
    host: list[Row] = []
    trainer = _model_rows("actor", shape, cfg.actor, dtype_bytes, layout.dp, tokens, n_mb, host)
    if a.kl_coef > 0:  # the trainer keeps a frozen reference policy for the KL (loss or reward)
        ref = _rank_params(shape, cfg.actor.tp, cfg.actor.pp, cfg.actor.ep)
        trainer.append(Row("reference weights", ref * dtype_bytes / GIB, "frozen copy for the KL"))
    if cfg.uses_critic:
        trainer += _model_rows("critic", shape, cfg.critic, dtype_bytes, layout.dp, cfg.critic.micro_batch_tokens, n_mb, host)
    sync = _sync_row(cfg, shape, dtype_bytes, layout)
    if sync is not None:
        trainer.append(sync)
    subtotal = sum(r.gib for r in trainer)
    trainer.append(Row("overhead", OVERHEAD_BYTES / GIB + OVERHEAD_FRACTION * subtotal, "CUDA context, NCCL, fragmentation"))

    server: list[Row] = []
    kv_tokens = None
    if layout.num_servers and layout.on_gpu and get_engine(rc.engine).memory_pool:
        fraction = rc.mem_fraction_static if layout.mode == "colocated" else DEDICATED_SERVER_FRACTION
        pool = fraction * gpu_gib * GIB
        weights = shape.total_params() * dtype_bytes / layout.server_tp
        kv_per_token = 2 * shape.layers * max(1, shape.kv_heads // layout.server_tp) * shape.head_dim * dtype_bytes
        kv_tokens = max(0, int((pool - weights) / kv_per_token))
        server = [Row("weights", weights / GIB, f"1/{layout.server_tp} of the model (server TP {layout.server_tp})"),
                  Row("KV cache", max(0.0, pool - weights) / GIB, f"rest of --mem-fraction-static {fraction}"),
                  Row("workspace", SERVER_WORKSPACE_BYTES / GIB, "activations, CUDA graphs")]
    return Estimate(gpu_gib, trainer, server, host, layout.mode == "colocated", kv_tokens, max_seq)


def check_fits(est: Estimate, cfg: Config, spec, layout: JobLayout, experts: Experts | None = None) -> None:
    """Raise LaunchError when the estimate passes the budget, naming the first change that fits."""
    if est.kv_tokens is not None and est.kv_tokens < est.max_sequence_tokens:
        raise LaunchError(
            f"a rollout server's KV cache holds about {est.kv_tokens:,} tokens, less than one sequence of "
            f"{est.max_sequence_tokens:,}: raise rollout.server_tp or rollout.mem_fraction_static")
    if est.peak_gib <= est.budget_gib:
        return
    trial, fixes = cfg.model_copy(deep=True), []
    for field, value in _fix_candidates(cfg, experts, layout):  # cumulative, cheapest first
        section, key = field.split(".")
        setattr(getattr(trial, section), key, value)
        fixes.append(f"{field}={str(value).lower()}")
        if estimate_memory(trial, spec, layout, est.gpu_gib, experts).peak_gib <= est.budget_gib:
            break
    else:
        fixes = []
    hint = ("set " + " ".join(fixes)) if fixes else "use more GPUs per model copy (a larger actor.tp or actor.pp) or a larger GPU"
    raise LaunchError(
        f"the estimated peak is {est.peak_gib:.1f} GiB per GPU, over the {est.budget_gib:.1f} GiB budget "
        f"({est.gpu_gib:.0f} GiB less {HEADROOM:.0%}); {hint} (see the table from megarl submit --dry-run)")


def _fix_candidates(cfg: Config, experts: Experts | None, layout: JobLayout):
    """Memory savers in the order a user would try them (cheapest in speed first)."""
    a = cfg.actor
    if a.tp > 1 and not a.sequence_parallel:
        yield "actor.sequence_parallel", True
    if not a.distributed_optimizer:
        yield "actor.distributed_optimizer", True
    if experts is not None and not cfg.uses_critic:  # more expert parallelism: fewer experts per rank
        widest = max(ep_choices(experts, layout.tp * layout.dp))
        if widest > a.ep:
            yield "actor.ep", widest
    if a.recompute != "full":
        yield "actor.recompute", "full"
    if not a.optimizer_offload:
        yield "actor.optimizer_offload", True


def checkpoint_bytes(cfg: Config, spec, experts: Experts | None = None) -> int:
    """Bytes of one resume checkpoint: the actor's (and critic's) weights, fp32 master copy and Adam state."""
    params = Shape.of(spec, experts).total_params()
    per_param = DTYPE_BYTES[cfg.model.dtype] + 12
    return params * per_param * (2 if cfg.uses_critic else 1)

