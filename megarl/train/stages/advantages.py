"""Advantages stage, every estimator in one place: the group baseline per sequence (GRPO, Dr. GRPO,
RLOO, ...) and the token-level advantages of the algorithm's registered estimator (GAE and returns
for PPO, whitened returns for REINFORCE++), with the KL penalty in the reward when the recipe asks."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from megarl.kernels import kl_penalty
from megarl.algorithms.advantages import AdvantageInputs, estimate_advantages, sequence_advantages
from megarl.algorithms.registry import get_algorithm
from megarl.config import AlgorithmConfig
from megarl.train.batch import TrainSequence
from megarl.train.stages.logprobs import OldLogprobPlan, SequenceTensors
from megarl.train.workers import is_last_stage


def with_group_advantages(seqs: Sequence[TrainSequence], algo: AlgorithmConfig) -> list[TrainSequence]:
    """The sequences with their group-relative advantage (algorithms with a group baseline; the
    others keep 0). A group's baseline needs all of it: call on the whole batch, before splitting it
    over DP ranks."""
    baseline = get_algorithm(algo.name).group_baseline
    if baseline is None:
        return list(seqs)
    advs = sequence_advantages([s.reward for s in seqs], [s.group for s in seqs], baseline, algo.group_eps)
    return [dataclasses.replace(s, advantage=a) for s, a in zip(seqs, advs)]


def token_advantages(seqs: Sequence[TrainSequence], tensors: Sequence[SequenceTensors], algo: AlgorithmConfig,
                     plan: OldLogprobPlan, dp_group=None) -> list[SequenceTensors]:
    """Per-token advantages (and returns for a critic) of this rank's sequences with the algorithm's
    registered estimator, on the last stage; the behaviour log-probs attached, and taken as the
    ratio's denominator when the plan says so. Whitening reduces over `dp_group`."""
    if not is_last_stage():
        return list(tensors)
    # KL in the reward is the actor's (recomputed) log-probs against the reference, taken before
    # old_logp may be replaced by the servers' behaviour log-probs for the ratio below.
    kls = [kl_penalty(t.old_logp, t.ref_logp, algo.kl_type) if (algo.kl_in_reward and t.ref_logp is not None) else None
           for t in tensors]
    out = []
    masks = [None if s.loss_mask is None else torch.tensor(s.loss_mask, dtype=torch.bool) for s in seqs]
    for s, t, mask in zip(seqs, tensors, masks):
        if s.behaviour_logp is not None and len(s.behaviour_logp) == s.model_tokens:  # the model's tokens only
            behaviour = torch.tensor(s.behaviour_logp, dtype=torch.float32)
            behaviour = behaviour if mask is None else torch.zeros(len(mask)).masked_scatter(mask, behaviour)
            t = dataclasses.replace(t, behaviour_logp=behaviour, old_logp=behaviour if plan.ratio_vs_behaviour else t.old_logp)
        out.append(dataclasses.replace(t, loss_mask=mask))
    # The estimators see the model's tokens alone (a tool's output is a transition of the environment:
    # rewards, values, returns-to-go and whitening skip it), then advantages go back in place, 0 at tool tokens.
    group_based = get_algorithm(algo.name).group_based
    inputs = AdvantageInputs(scores=[s.advantage if group_based else s.reward for s in seqs],
                             lengths=[s.model_tokens for s in seqs], kl=[_model_part(k, m) for k, m in zip(kls, masks)],
                             values=[_model_part(t.old_values, m) for t, m in zip(out, masks)])
    est = estimate_advantages(algo, inputs, dp_group)
    returns = est.returns if est.returns is not None else [None] * len(out)
    return [dataclasses.replace(t, advantages=_in_place(a, m), returns=_in_place(r, m))
            for t, a, r, m in zip(out, est.advantages, returns, masks)]


def _model_part(values: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    return values if values is None or mask is None else values[mask]


def _in_place(values: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Per-model-token values at their response positions (0 at tool tokens)."""
    if values is None or mask is None:
        return values
    return torch.zeros(len(mask), dtype=values.dtype).masked_scatter(mask, values)
