"""Log-probs stage: the actor's old log-probs, the reference's log-probs and the critic's values
of every response token, before the update (last pipeline stage)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from megarl.algorithms.registry import get_correction
from megarl.config import Config
from megarl.train.batch import MicroBatch, Packer, TrainSequence
from megarl.train.workers import ModelWorker, is_last_stage


@dataclasses.dataclass
class SequenceTensors:
    """Per-token values of one sequence on the last stage (float32 on the host; None: not needed)."""

    old_logp: torch.Tensor | None = None  # the PPO ratio's denominator
    ref_logp: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    behaviour_logp: torch.Tensor | None = None  # the rollout server's
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None  # bool, the model's tokens (multi-turn samples; None: every token)


@dataclasses.dataclass(frozen=True)
class OldLogprobPlan:
    """Where the PPO ratio's denominator comes from, decided by the recipe."""

    single_pass: bool  # the update's own forward pass gives it (no separate pass)
    ratio_vs_behaviour: bool  # the servers' behaviour log-probs are it
    recompute: bool  # a separate forward pass of the actor before the update

    @classmethod
    def from_config(cls, cfg: Config) -> "OldLogprobPlan":
        a = cfg.algorithm
        # An importance correction (tis, mis, icepop, decoupled) weighs the recomputed (proximal) log-probs
        # against the servers' behaviour log-probs, so it needs both: the old log-probs are recomputed
        # before the update and never replaced by the behaviour ones.
        reweights = get_correction(a.importance_correction).reweights
        # One epoch, one mini-batch, no importance correction: the update's forward pass sees the
        # rollout's weights, so its log-probs are the old ones (ratio 1); not with KL in the reward,
        # which needs them before the update.
        single = a.epochs == 1 and a.mini_batches == 1 and not reweights and not (a.kl_in_reward and a.kl_coef)
        # Off-policy rollouts (rollout.off_policy): the ratio is taken against the policy that sampled
        # the batch, from the servers' log-probs (with an importance correction, against the recomputed
        # log-probs instead, each token weighted toward the behaviour policy).
        behaviour = cfg.rollout.off_policy and not reweights
        return cls(single, behaviour, not (single or (behaviour and not a.kl_in_reward)))


def sampling_temperature(cfg: Config) -> float:
    """The temperature the log-probs are taken at: the rollout's (1.0 for greedy sampling)."""
    t = cfg.rollout.temperature
    return t if t > 1e-5 else 1.0


def compute(seqs: Sequence[TrainSequence], *, actor: ModelWorker, reference: ModelWorker | None, critic: ModelWorker | None,
            plan: OldLogprobPlan, pack: Packer, temperature: float) -> list[SequenceTensors]:
    """Old log-probs (if the plan recomputes them), reference log-probs and critic values, per sequence."""
    out = [SequenceTensors() for _ in seqs]
    if not plan.recompute and reference is None and critic is None:
        return out  # nothing to compute before the update
    mbs = pack(seqs)
    if not mbs:
        return out
    if plan.recompute:
        _scatter(actor.logprobs(mbs, temperature), mbs, seqs, out, "logp", "old_logp")
    if reference is not None:
        _scatter(reference.logprobs(mbs, temperature), mbs, seqs, out, "logp", "ref_logp")
    if critic is not None:
        _scatter(critic.values(mbs), mbs, seqs, out, "values", "old_values")
    return out


def _scatter(stats: list[dict], mbs: list[MicroBatch], seqs, out: list[SequenceTensors], key: str, field: str) -> None:
    if not is_last_stage():
        return
    for mb, st in zip(mbs, stats):
        host = st[key].detach().float().cpu()  # one device-to-host copy per micro-batch
        for b, i in enumerate(mb.seq_ids):
            setattr(out[i], field, host[b, :len(seqs[i].response_ids)])
