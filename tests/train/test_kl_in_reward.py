"""KL in the reward under rollout.mode=overlap uses the actor's recomputed log-probs, not the servers'
behaviour log-probs that replace old_logp for the PPO ratio (it used the behaviour ones: the
recomputed log-probs were computed and thrown away; fails before the fix)."""

import torch

from megarl.config import Config
from megarl.algorithms import advantages as algo_fns
from megarl.train.batch import TrainSequence
from megarl.train.stages import advantages
from megarl.train.stages.logprobs import OldLogprobPlan, SequenceTensors


def test_kl_in_reward_uses_recomputed_logprobs_under_overlap(monkeypatch):
    cfg = Config.model_validate({
        "model": {"path": "unused"},
        "data": {"train": ["toy-arith:rl_train"]},
        "algorithm": {"name": "reinforce_pp", "kl_in_reward": True, "kl_coef": 0.5, "kl_type": "k1"},
        "rollout": {"mode": "overlap"},
    })
    monkeypatch.setattr(advantages, "is_last_stage", lambda: True)
    recomputed = torch.tensor([-1.0, -2.0, -0.5])
    behaviour = [-3.0, -0.1, -2.5]
    ref = torch.tensor([-1.5, -1.0, -1.0])
    seqs = [TrainSequence(prompt_ids=[1, 2], response_ids=[3, 4, 5], reward=1.0, group=0, behaviour_logp=behaviour)]
    tensors = [SequenceTensors(old_logp=recomputed.clone(), ref_logp=ref.clone())]
    (out,) = advantages.token_advantages(seqs, tensors, cfg.algorithm, OldLogprobPlan.from_config(cfg))

    rewards = algo_fns.token_rewards(1.0, 3, recomputed - ref, 0.5)
    expected = algo_fns.whiten_across_ranks(algo_fns.discounted_returns([rewards], 1.0))[0]
    torch.testing.assert_close(out.advantages, expected)
    # the PPO ratio is still taken against the behaviour log-probs
    torch.testing.assert_close(out.old_logp, torch.tensor(behaviour))
