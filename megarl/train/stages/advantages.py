"""Advantages stage, every estimator in one place: group baselines per sequence (GRPO, Dr. GRPO,
RLOO) and token-level advantages (GAE and returns for PPO, whitened returns for REINFORCE++), with
the KL penalty in the reward when the recipe asks for it."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from megarl.config import AlgorithmConfig
from megarl.train import algorithms as algo_fns
from megarl.train.batch import TrainSequence
from megarl.train.stages.logprobs import OldLogprobPlan, SequenceTensors
from megarl.train.workers import is_last_stage


def with_group_advantages(seqs: Sequence[TrainSequence], algo: AlgorithmConfig) -> list[TrainSequence]:
    """The sequences with their group-relative advantage (group algorithms; the others keep 0). A
    group's baseline needs all of it: call on the whole batch, before splitting it over DP ranks."""
    if algo.name not in algo_fns.GROUP_MODE:
        return list(seqs)
    advs = algo_fns.sequence_advantages([s.reward for s in seqs], [s.group for s in seqs], algo.name, algo.group_eps)
    return [dataclasses.replace(s, advantage=a) for s, a in zip(seqs, advs)]


def token_advantages(seqs: Sequence[TrainSequence], tensors: Sequence[SequenceTensors], algo: AlgorithmConfig,
                     plan: OldLogprobPlan, dp_group=None) -> list[SequenceTensors]:
    """Per-token advantages (and returns for PPO) of this rank's sequences, on the last stage; the
    behaviour log-probs attached, and taken as the ratio's denominator when the plan says so.
    Whitening reduces over `dp_group`."""
    if not is_last_stage():
        return list(tensors)
    # KL in the reward is the actor's (recomputed) log-probs against the reference, taken before
    # old_logp may be replaced by the servers' behaviour log-probs for the ratio below.
    kls = [
        algo_fns.kl_penalty(t.old_logp, t.ref_logp, algo.kl_type) if (algo.kl_in_reward and t.ref_logp is not None) else None
        for t in tensors
    ]
    out = []
    for s, t in zip(seqs, tensors):
        if s.behaviour_logp is not None and len(s.behaviour_logp) == len(s.response_ids):
            behaviour = torch.tensor(s.behaviour_logp, dtype=torch.float32)
            t = dataclasses.replace(t, behaviour_logp=behaviour, old_logp=behaviour if plan.ratio_vs_behaviour else t.old_logp)
        out.append(t)
    if algo.name in algo_fns.GROUP_MODE:
        return [dataclasses.replace(t, advantages=torch.full((len(s.response_ids),), s.advantage, dtype=torch.float32))
                for s, t in zip(seqs, out)]
    rewards = [algo_fns.token_rewards(s.reward, len(s.response_ids), kl, algo.kl_coef) for s, kl in zip(seqs, kls)]
    if algo.name == "ppo":
        adv, ret = algo_fns.gae_advantages(rewards, [t.old_values for t in out], algo.gamma, algo.lam)
        adv = algo_fns.whiten_across_ranks(adv, dp_group)
        return [dataclasses.replace(t, advantages=a, returns=r) for t, a, r in zip(out, adv, ret)]
    ret = algo_fns.discounted_returns(rewards, algo.gamma)  # reinforce_pp
    adv = algo_fns.whiten_across_ranks(ret, dp_group)
    return [dataclasses.replace(t, advantages=a) for t, a in zip(out, adv)]
