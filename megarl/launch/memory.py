"""Per-GPU memory estimate of a training job (trainer ranks and rollout servers), before it is submitted.

`estimate_memory(cfg, spec, layout, gpu_gib)` adds up, for the most loaded trainer rank:

    weights      params on the rank x 2 bytes (bf16/fp16; fp32: 4). The rank holds 1/tp of every
                 sharded matrix of its pp stage's layers, plus the embedding (first stage) and the
                 output layer (last stage; with tied embeddings and pp > 1 a copy), plus norms.
    gradients    params x 4 bytes (Megatron DDP keeps fp32 main grads: grad_reduce_in_fp32).
    optimizer    params x 12 bytes (fp32 master copy, Adam m and v), / dp with the distributed
                 optimizer, 0 on the GPU when offloaded to the CPU (then it is listed as host RAM).
    activations  the stage's layers x the micro-batches in flight (1F1B: up to pp on the first stage),
                 per layer and token (Korthikanti et al. 2022, "Reducing Activation Recomputation",
                 with flash/varlen attention, so no s^2 term): 34 h / tp bytes with sequence
                 parallelism, (10 + 24 / tp) h without; full recompute keeps only each layer's
                 input (2 h, / tp with sequence parallelism) plus one layer's working set;
                 plus the logits of one micro-batch (V / tp x 2 bytes, and their gradient).
    reference    the frozen reference policy's weights when the KL is a loss (kl_coef > 0).
    critic       PPO's critic at its own layout: weights, gradients, optimizer, activations.
    weight sync  the bucket buffers one push keeps alive at once on trainer rank 0 (`weight_sync.sync_peak_bytes`):
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
    """The dimensions the estimate needs (from megarl.models.spec.ModelSpec)."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def of(cls, spec) -> "Shape":
        return cls(spec.hidden_size, spec.ffn_hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads,
                   spec.head_dim, spec.vocab_size, spec.tie_word_embeddings, spec.qkv_bias)

    def layer_params(self) -> tuple[int, int]:
        """(params sharded by TP, params replicated on every TP rank) of one transformer layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        sharded = self.hidden * (q + 2 * kv) + q * self.hidden + 3 * self.hidden * self.ffn
        if self.qkv_bias:
            sharded += q + 2 * kv
        return sharded, 2 * self.hidden

    def total_params(self) -> int:
        sharded, replicated = self.layer_params()
        return self.layers * (sharded + replicated) + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


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


def _rank_params(shape: Shape, tp: int, pp: int) -> int:
    """Params on the most loaded rank: a stage's layers, plus embedding and/or output layer."""
    sharded, replicated = shape.layer_params()
    layers = shape.layers // pp
    body = layers * (sharded // tp + replicated)
    embed = shape.vocab * shape.hidden // tp
    if pp == 1:
        return body + embed * (1 if shape.tied else 2) + shape.hidden
    # first stage: embedding; last: output layer (a copy of the embedding when tied) + final norm
    return body + embed + shape.hidden


def _activations(shape: Shape, tokens: int, tp: int, pp: int, sp: bool, recompute: str | None, n_mb: int) -> float:
    h, layers = shape.hidden, shape.layers // pp
    full_layer = tokens * h * (34 / tp if sp else 10 + 24 / tp)
    if recompute == "full":
        stored = tokens * h * 2 / (tp if sp else 1)
        per_mb = layers * stored + full_layer
    else:
        per_mb = layers * full_layer
    in_flight = max(1, min(pp, n_mb))
    logits = tokens * (shape.vocab / tp) * 2 * 2
    return in_flight * per_mb + logits


def _model_rows(label: str, shape: Shape, par, dtype_bytes: int, dp: int, tokens: int, n_mb: int, host: list[Row]) -> list[Row]:
    params = _rank_params(shape, par.tp, par.pp)
    rows = [Row(f"{label} weights", params * dtype_bytes / GIB, f"{params / 1e9:.2f}B params on the rank (TP {par.tp}, PP {par.pp})"),
            Row(f"{label} gradients", params * 4 / GIB, "fp32 main grads")]
    opt_bytes = params * 12 / (dp if par.distributed_optimizer else 1)
    where = f"fp32 master + Adam m, v{f', / DP {dp}' if par.distributed_optimizer else ''}"
    if getattr(par, "optimizer_offload", False):
        host.append(Row(f"{label} optimizer (offloaded)", opt_bytes / GIB, where + ", per rank"))
    else:
        rows.append(Row(f"{label} optimizer", opt_bytes / GIB, where))
    recompute = par.recompute
    rows.append(Row(f"{label} activations", _activations(shape, tokens, par.tp, par.pp, par.sequence_parallel, recompute, n_mb) / GIB,
                    f"{tokens:,} tokens per micro-batch, recompute={recompute or 'none'}, "
                    f"sequence parallel {'on' if par.sequence_parallel and par.tp > 1 else 'off'}"))
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


def estimate_memory(cfg: Config, spec, layout: JobLayout, gpu_gib: float) -> Estimate:
    """The per-GPU estimate for `cfg` at `layout` on GPUs of `gpu_gib` GiB."""
    shape = Shape.of(spec)
    dtype_bytes = DTYPE_BYTES[cfg.model.dtype]
    rc, a = cfg.rollout, cfg.algorithm
    samples = cfg.data.prompts_per_step * rc.n
    max_seq = cfg.data.max_prompt_tokens + rc.max_new_tokens
    tokens = cfg.actor.micro_batch_tokens
    n_mb = max(1, math.ceil(samples * max_seq / max(1, layout.dp) / a.mini_batches / tokens))
    host: list[Row] = []
    trainer = _model_rows("actor", shape, cfg.actor, dtype_bytes, layout.dp, tokens, n_mb, host)
    if a.kl_coef > 0:  # the trainer keeps a frozen reference policy for the KL (loss or reward)
        ref = _rank_params(shape, cfg.actor.tp, cfg.actor.pp)
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


def check_fits(est: Estimate, cfg: Config, spec, layout: JobLayout) -> None:
    """Raise LaunchError when the estimate passes the budget, naming the first change that fits."""
    if est.kv_tokens is not None and est.kv_tokens < est.max_sequence_tokens:
        raise LaunchError(
            f"a rollout server's KV cache holds about {est.kv_tokens:,} tokens, less than one sequence of "
            f"{est.max_sequence_tokens:,}: raise rollout.server_tp or rollout.mem_fraction_static")
    if est.peak_gib <= est.budget_gib:
        return
    trial, fixes = cfg.model_copy(deep=True), []
    for field, value in _fix_candidates(cfg):  # cumulative, cheapest first
        section, key = field.split(".")
        setattr(getattr(trial, section), key, value)
        fixes.append(f"{field}={str(value).lower()}")
        if estimate_memory(trial, spec, layout, est.gpu_gib).peak_gib <= est.budget_gib:
            break
    else:
        fixes = []
    hint = ("set " + " ".join(fixes)) if fixes else "use more GPUs per model copy (a larger actor.tp or actor.pp) or a larger GPU"
    raise LaunchError(
        f"the estimated peak is {est.peak_gib:.1f} GiB per GPU, over the {est.budget_gib:.1f} GiB budget "
        f"({est.gpu_gib:.0f} GiB less {HEADROOM:.0%}); {hint} (see the table from megarl submit --dry-run)")


def _fix_candidates(cfg: Config):
    """Memory savers in the order a user would try them (cheapest in speed first)."""
    a = cfg.actor
    if a.tp > 1 and not a.sequence_parallel:
        yield "actor.sequence_parallel", True
    if not a.distributed_optimizer:
        yield "actor.distributed_optimizer", True
    if a.recompute != "full":
        yield "actor.recompute", "full"
    if not a.optimizer_offload:
        yield "actor.optimizer_offload", True


def checkpoint_bytes(cfg: Config, spec) -> int:
    """Bytes of one resume checkpoint: the actor's (and critic's) weights, fp32 master copy and Adam state."""
    params = Shape.of(spec).total_params()
    per_param = DTYPE_BYTES[cfg.model.dtype] + 12
    return params * per_param * (2 if cfg.uses_critic else 1)

