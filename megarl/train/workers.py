"""Model workers: the actor, critic and frozen reference as Megatron models on this rank, with
the three operations the RL step needs: per-token log-probs, values, and a training step.

Per-token outputs exist only on the last pipeline stage (where the loss is computed); other
stages get empty results and take part in the pipeline schedule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal

import torch

from megarl.config import ParallelConfig
from megarl.models.build import build_model
from megarl.models import router_replay
from megarl.models.pipeline import run_pipeline
from megarl.models.spec import ModelSpec
from megarl.train.batch import MicroBatch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def tp_group_if_sharded():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None


def is_last_stage() -> bool:
    from megatron.core import parallel_state as ps

    return ps.is_pipeline_last_stage()


def response_logprobs(logits: torch.Tensor, mb: MicroBatch, spec: ModelSpec, temperature: float):
    """Log-probs and entropy of each response token, [B, T] float32 (fused vocab-parallel kernel)."""
    from megarl.kernels import logprobs_and_entropy

    if mb.logits_selected:  # logits [1, n, V/tp] at the response positions only
        logp, entropy = logprobs_and_entropy(
            logits[0], mb.logit_labels, temperature=temperature, tp_group=tp_group_if_sharded(), vocab_size=spec.vocab_size
        )
        flat = mb.resp_flat  # where each of the n goes in [B * T]
        size = mb.resp_mask.numel()
        shape = mb.resp_mask.shape
        return (logp.new_zeros(size).index_copy(0, flat, logp).view(shape),
                entropy.new_zeros(size).index_copy(0, flat, entropy).view(shape))
    logp, entropy = logprobs_and_entropy(
        logits, mb.labels, temperature=temperature, tp_group=tp_group_if_sharded(), vocab_size=spec.vocab_size
    )
    idx = mb.resp_index
    return logp.reshape(-1)[idx], entropy.reshape(-1)[idx]


def response_values(values: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """Critic values of the states before each response token, [B, T] float32."""
    return values[..., 0].float().reshape(-1)[mb.resp_index]


@dataclasses.dataclass
class WorkerSettings:
    """One model worker. No defaults here: layout, recompute, optimizer and LR schedule are the
    recipe's actor or critic section (megarl.config.ParallelConfig) as it is."""

    role: Literal["actor", "critic", "reference"]
    dtype: torch.dtype
    parallel: ParallelConfig  # cfg.actor (actor, reference) or cfg.critic
    trainable: bool  # False: frozen (the reference), no optimizer
    optimizer_steps: int  # optimizer steps over the whole run: the LR schedule's length (warmup ratio, decay)


class ModelWorker:
    """One role's model on this rank. `weights(model)` fills the freshly built model (an HF or
    torch_dist load, a test's values) before the optimizer exists: Megatron's fp16/bf16 optimizer
    and its distributed optimizer take fp32 main copies of the weights when they are built, and
    write those back at every step, so weights changed after construction would be undone at the
    first step (bf16 and fp16 runs; fp32 parameters are their own main copies). A resume restores
    weights and main copies together (megarl.checkpoint.torch_dist.load_training_state)."""

    def __init__(self, spec: ModelSpec, settings: WorkerSettings, weights: Callable[[torch.nn.Module], object]):
        from megarl.models.training import wrap_for_training

        self.spec = spec
        self.settings = settings
        role = "critic" if settings.role == "critic" else "actor"
        par = settings.parallel
        self.model = build_model(spec, role=role, dtype=settings.dtype, recompute=par.recompute,
                                 sequence_parallel=par.sequence_parallel)
        with torch.no_grad():
            weights(self.model)
        if spec.is_moe:  # route by the rollout's experts where micro-batches carry them (or only compare)
            router_replay.set_replay(self.model, router_replay.replays_routes(par.router_replay, spec))
        self.ddp = self.optimizer = self.scheduler = None
        if settings.trainable:
            self.ddp, self.optimizer = wrap_for_training(self.model, par)
            self.scheduler = _scheduler(self.optimizer, par, settings.optimizer_steps)
        else:
            for p in self.model.parameters():
                p.requires_grad_(False)

    @property
    def module(self):
        return self.ddp if self.ddp is not None else self.model

    # ---- colocated mode: give the device memory to the rollout server ------------------
    def offload(self) -> int:
        """Move weights, gradient buffers and optimizer state to host memory; returns bytes freed."""
        from megarl.models.offload import StorageOffload, training_tensors

        self._offload = getattr(self, "_offload", None) or StorageOffload()
        return self._offload.offload(training_tensors(self.model, self.ddp, self.optimizer))

    def reload(self) -> int:
        """Undo offload(): every tensor back on the device, bit for bit; returns bytes restored."""
        held = getattr(self, "_offload", None)
        return held.reload() if held is not None else 0

    # ---- forward-only -------------------------------------------------------------------
    @torch.no_grad()
    def logprobs(self, microbatches: list[MicroBatch], temperature: float) -> list[dict]:
        self.model.eval()

        def step(output, mb):
            logp, entropy = response_logprobs(output, mb, self.spec, temperature)
            return output.new_zeros(()), {"logp": logp, "entropy": entropy}

        return run_pipeline([self.module], microbatches, step, forward_only=True)

    @torch.no_grad()
    def values(self, microbatches: list[MicroBatch]) -> list[dict]:
        self.model.eval()

        def step(output, mb):
            return output.new_zeros(()), {"values": response_values(output, mb)}

        return run_pipeline([self.module], microbatches, step, forward_only=True)

    # ---- training ---------------------------------------------------------------------
    def train_step(self, microbatches: list[MicroBatch], loss_fn: Callable[[torch.Tensor, MicroBatch], tuple[torch.Tensor, dict]]):
        """One optimizer step over `microbatches`; returns (stats per micro-batch, grad_norm, lr,
        stepped). A non-finite loss or gradient on any rank skips the step (and the LR schedule) on
        every rank: stepped=False, grad_norm=nan, weights and optimizer state unchanged."""
        from megarl.models.training import zero_grads

        self.model.train()
        zero_grads(self.ddp, self.optimizer)
        loss_ok: list[torch.Tensor] = []

        def checked_loss(output, mb):
            loss, stats = loss_fn(output, mb)
            loss_ok.append(torch.isfinite(loss.detach()).all())
            return loss, stats

        stats = run_pipeline([self.ddp], microbatches, checked_loss, forward_only=False)
        if not self._loss_and_grads_finite(loss_ok):
            return stats, float("nan"), self.optimizer.param_groups[0]["lr"], False
        ok, grad_norm, _ = self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step(increment=1)
        return stats, float(grad_norm) if grad_norm is not None else 0.0, lr, bool(ok)

    def _loss_and_grads_finite(self, loss_ok: list[torch.Tensor]) -> bool:
        """True on every rank when no rank saw an inf/nan loss or gradient (one all-reduce)."""
        from megarl.runtime import collectives

        grads = [b.grad_data for b in self.ddp.buffers + self.ddp.expert_parallel_buffers]
        device = grads[0].device if grads else torch.device("cpu")
        bad = torch.zeros(1, device=device)
        for ok in loss_ok:
            bad += (~ok).to(device)
        for g in grads:
            bad += (~torch.isfinite(g).all()).to(device)
        return collectives.all_reduce(bad, op="max").item() == 0


def _scheduler(optimizer, par: ParallelConfig, optimizer_steps: int):
    """Megatron's LR (and weight-decay) schedule for the section `par` over its horizon (`par.lr_horizon_steps`,
    or the run's `optimizer_steps`): warmup for lr_warmup_steps (or lr_warmup_ratio of the horizon), then
    lr_schedule down to min_lr at the horizon's end."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    horizon = par.lr_horizon_steps or optimizer_steps
    warmup = par.lr_warmup_steps or math.ceil(par.lr_warmup_ratio * horizon)
    decay_steps = max(horizon, warmup + 1)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else par.lr,
        max_lr=par.lr,
        min_lr=par.min_lr if par.lr_schedule != "constant" else par.lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay_steps,
        lr_decay_style=par.lr_schedule,
        start_wd=par.weight_decay,
        end_wd=par.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )
