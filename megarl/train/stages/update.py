"""Update stage: the actor's (and critic's) optimizer steps over a step's batch, epochs x mini-batches,
each mini-batch packed into micro-batches with typed loss targets and run through Megatron's
pipeline schedule."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Sequence

import torch

from megarl.config import AlgorithmConfig
from megarl.models.spec import ModelSpec
from megarl.runtime import collectives
from megarl.algorithms import corrections, losses
from megarl.algorithms.losses import LossNormalizer, LossTargets
from megarl.algorithms.registry import correction_fn, get_correction
from megarl.train.batch import MicroBatch, Packer, TrainSequence, per_sequence_matrix, split_minibatches
from megarl.train.stages import metrics as step_metrics
from megarl.train.stages.logprobs import OldLogprobPlan, SequenceTensors
from megarl.train.workers import ModelWorker, is_last_stage, response_logprobs, response_values

class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row were skipped for a non-finite loss or gradient."""


_TARGETS = ("old_logp", "ref_logp", "advantages", "returns", "old_values", "behaviour_logp")


@dataclasses.dataclass(frozen=True)
class UpdateSetup:
    """What the update needs besides the models and the batch, fixed for the run."""

    algo: AlgorithmConfig
    value_clip: float | None
    value_agg: str  # critic.loss_agg
    plan: OldLogprobPlan
    pack: Packer
    spec: ModelSpec
    temperature: float
    seed: int
    dp: int
    max_skipped_updates: int
    dp_group: object = None


@dataclasses.dataclass
class UpdateTotals:
    """Running totals of one step's mini-batch updates on this rank (a mid-step checkpoint keeps them)."""

    sums: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)
    grad_norms: list = dataclasses.field(default_factory=list)
    critic_norms: list = dataclasses.field(default_factory=list)
    lrs: list = dataclasses.field(default_factory=list)
    skipped: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    mismatch: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])  # |diff| sum, count, max (single pass)


def schedule(num_seqs: int, algo: AlgorithmConfig, seed: int, step: int) -> list[list[int]]:
    """The step's mini-batches in order, as sequence indices: a seeded shuffle per epoch, then
    algorithm.mini_batches near-equal parts. Every DP rank takes the same number (some possibly
    empty) so optimizer steps stay in lockstep."""
    order, parts = list(range(num_seqs)), []
    for epoch in range(algo.epochs):
        random.Random(seed * 7919 + step * 31 + epoch).shuffle(order)
        parts.extend(split_minibatches(order, algo.mini_batches))
    return parts


def loss_normalizer(seqs: Sequence[TrainSequence], num_microbatches: int, dp_group, dp: int) -> LossNormalizer:
    """The mini-batch's loss tokens and sequences summed over the DP ranks."""
    local = torch.tensor([sum(s.model_tokens for s in seqs if s.loss_weight > 0), sum(s.loss_weight > 0 for s in seqs)],
                         dtype=torch.float64)
    collectives.all_reduce(local, group=dp_group)
    return LossNormalizer(tokens=float(local[0]), sequences=float(local[1]), num_microbatches=num_microbatches, dp=dp)


def attach_targets(mbs: list[MicroBatch], seqs: Sequence[TrainSequence], tensors: Sequence[SequenceTensors],
                   algo: AlgorithmConfig, totals: UpdateTotals | None = None) -> list[MicroBatch]:
    """The micro-batches with their loss targets as [B, T] matrices on the training device. With an
    importance correction (algorithm.importance_correction), each token's weight from the recomputed old
    log-probs against the servers' behaviour log-probs (on the last pipeline stage, which holds them),
    its statistics added to `totals` as `is/...`."""
    spec = get_correction(algo.importance_correction)
    out = []
    for mb in mbs:
        t_max, rows, device = mb.resp_mask.shape[1], mb.seq_ids, mb.resp_mask.device
        fields = {key: per_sequence_matrix([getattr(tensors[i], key) for i in rows], t_max, device)
                  for key in _TARGETS if all(getattr(tensors[i], key) is not None for i in rows)}
        weight = torch.tensor([seqs[i].loss_weight > 0 for i in rows], device=device).unsqueeze(1)
        targets = LossTargets(loss_mask=mb.resp_mask & weight, **fields)
        if spec.reweights and targets.old_logp is not None:
            if targets.behaviour_logp is None:
                missing = sum(tensors[i].behaviour_logp is None for i in rows)
                raise ValueError(
                    f"algorithm.importance_correction={spec.name} needs the servers' behaviour log-prob of every response "
                    f"token, but {missing} of {len(rows)} sequences came without them (or not one per token); "
                    "use a rollout engine that returns log-probs, or importance_correction=none")
            result = correction_fn(spec)(targets.old_logp, targets.behaviour_logp, targets.loss_mask, algo)
            targets.is_weights = result.weights
            if totals is not None:
                step_metrics.accumulate([result.stats], totals.sums, totals.counts, prefix="is/")
        out.append(dataclasses.replace(mb, targets=targets))
    return out


def apply(part: Sequence[int], seqs: Sequence[TrainSequence], tensors: Sequence[SequenceTensors], *, actor: ModelWorker,
          critic: ModelWorker | None, setup: UpdateSetup, totals: UpdateTotals, skip_streak: dict, step: int) -> None:
    """One optimizer step of the actor (and critic) on the sequences `part` of this rank's shard
    (0-based RL step `step`); adds its statistics to `totals`. `skip_streak` counts, per role, the
    optimizer steps skipped in a row for a non-finite loss or gradient (run.max_skipped_updates ends the run)."""
    kept = [i for i in part if seqs[i].loss_weight > 0]
    sub = [seqs[i] for i in kept]
    mbs = setup.pack(sub) if sub else []
    mbs = attach_targets(mbs, sub, [tensors[i] for i in kept], setup.algo, totals) if mbs else setup.pack.stand_in()
    norm = loss_normalizer(sub, len(mbs), setup.dp_group, setup.dp)

    def actor_loss(output, mb: MicroBatch):
        if mb.empty:
            return output.sum() * 0.0, {}
        logp, entropy = response_logprobs(output, mb, setup.spec, setup.temperature)
        targets = mb.targets
        if targets.old_logp is None:  # single pass: these are the rollout weights
            targets = dataclasses.replace(targets, old_logp=logp.detach())
            if targets.behaviour_logp is not None:
                step_metrics.record_mismatch(totals.mismatch, logp.detach(), targets.behaviour_logp, mb.resp_mask)
        return losses.actor_loss(logp, entropy, targets, setup.algo, norm)

    stats, gnorm, lr, stepped = actor.train_step(mbs, actor_loss)
    totals.skipped += _note_update("actor", stepped, skip_streak, setup.max_skipped_updates, step)
    totals.grad_norms.append(gnorm)
    totals.lrs.append(lr)
    step_metrics.accumulate(stats, totals.sums, totals.counts, prefix="actor/")
    if critic is not None:
        def critic_loss(output, mb: MicroBatch):
            if mb.empty:
                return output.sum() * 0.0, {}
            return losses.value_loss(response_values(output, mb), mb.targets, setup.value_clip, norm, setup.value_agg)

        cstats, cnorm, _, stepped = critic.train_step(mbs, critic_loss)
        totals.skipped += _note_update("critic", stepped, skip_streak, setup.max_skipped_updates, step)
        totals.critic_norms.append(cnorm)
        step_metrics.accumulate(cstats, totals.sums, totals.counts, prefix="critic/")


def _note_update(role: str, stepped: bool, streaks: dict, limit: int, step: int) -> int:
    """Count a skipped optimizer step (non-finite loss or gradient; the worker agreed on it over all
    ranks); after `limit` in a row, stop the run. Returns 1 if skipped."""
    streaks[role] = 0 if stepped else streaks.get(role, 0) + 1
    if streaks[role] >= limit:
        raise NonFiniteTrainingError(
            f"{role}: {streaks[role]} optimizer steps in a row skipped for a non-finite loss or gradient at step "
            f"{step + 1}; stopping (weights were not updated with them; checkpoints hold finite weights). "
            "Lower the learning rate, check rewards and data, or raise run.max_skipped_updates"
        )
    return 0 if stepped else 1


def _max_finite(xs) -> float:
    """Largest finite value (0.0 for none; nan when every value is non-finite, i.e. all skipped)."""
    finite = [x for x in xs if math.isfinite(x)]
    return max(finite) if finite else (float("nan") if xs else 0.0)


def correction_metrics(totals: UpdateTotals, reporter: bool) -> dict:
    """The importance correction's statistics (`is/weight_mean`, `is/masked_frac`, ...: token-weighted means
    over every optimizer step of the step and all ranks; `reporter`: this rank's totals count)."""
    keys = [f"is/{name}" for name in corrections.STAT_NAMES]
    vec = torch.tensor([[totals.sums.get(k, 0.0), totals.counts.get(k, 0.0)] for k in keys], dtype=torch.float64)
    if not reporter:
        vec.zero_()
    collectives.all_reduce(vec)
    return {k: float(vec[i, 0] / vec[i, 1]) for i, k in enumerate(keys) if vec[i, 1] > 0}


def summary(totals: UpdateTotals, tensors: Sequence[SequenceTensors], setup: UpdateSetup) -> dict:
    """The update's metrics over all ranks: loss statistics, grad norms, LR, the importance correction's
    statistics, train/inference mismatch."""
    from megatron.core import parallel_state as ps

    metrics = step_metrics.reduce_stats(totals.sums, totals.counts)
    metrics["actor/grad_norm"] = _max_finite(totals.grad_norms)
    metrics["train/skipped_updates"] = totals.skipped
    metrics["actor/lr"] = totals.lrs[-1] if totals.lrs else 0.0
    if totals.critic_norms:
        metrics["critic/grad_norm"] = _max_finite(totals.critic_norms)
    mismatch = list(totals.mismatch)
    reporter = is_last_stage() and ps.get_tensor_model_parallel_rank() == 0
    if get_correction(setup.algo.importance_correction).reweights:
        metrics.update(correction_metrics(totals, reporter))
    if reporter and not setup.plan.single_pass and not setup.plan.ratio_vs_behaviour:
        for t in tensors:  # recomputed old log-probs against the server's
            if t.behaviour_logp is not None and t.old_logp is not None:
                mask = t.loss_mask if t.loss_mask is not None else torch.ones_like(t.old_logp, dtype=torch.bool)
                step_metrics.record_mismatch(mismatch, t.old_logp, t.behaviour_logp, mask)
    metrics.update(step_metrics.mismatch_metrics(mismatch, reporter))
    return metrics
