"""The options the upstream re-read added (issue 22), each against a plain reference: the LR schedule's
horizon (HF's cosine_with_min_lr, which SimpleRL v0's OpenRLHF uses), the value loss's aggregation modes
(OpenRLHF's ValueLoss written in plain torch), template stops, the client's context cap, the averages."""

from __future__ import annotations

import math

import pytest
import torch

from megarl.algorithms.losses import LossNormalizer, value_loss
from megarl.config import ConfigError, CriticConfig, ParallelConfig, build_section
from megarl.algorithms.losses import LossTargets


def _lrs(par: ParallelConfig, run_steps: int) -> list[float]:
    from megarl.train.workers import _scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = _scheduler(optimizer, par, optimizer_steps=run_steps)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(run_steps):
        scheduler.step(increment=1)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_lr_horizon_matches_hf_cosine_with_min_lr():
    """A 30-step run on a 100-step horizon follows the first 30 steps of HF's cosine_with_min_lr over 100
    (warmup ceil(0.03 x 100) = 3, min_lr 0.1 x lr), as SimpleRL v0's ppo_actor.py builds it."""
    from transformers import get_scheduler

    lr, horizon, run = 5e-7, 100, 30
    par = ParallelConfig(lr=lr, min_lr=0.1 * lr, lr_warmup_ratio=0.03, lr_schedule="cosine", lr_horizon_steps=horizon)
    reference_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    reference = get_scheduler("cosine_with_min_lr", reference_opt, num_warmup_steps=math.ceil(0.03 * horizon),
                              num_training_steps=horizon, scheduler_specific_kwargs={"min_lr": 0.1 * lr})
    expected = [reference_opt.param_groups[0]["lr"]]
    for _ in range(run):
        reference_opt.step()
        reference.step()
        expected.append(reference_opt.param_groups[0]["lr"])
    assert _lrs(par, run) == pytest.approx(expected, rel=1e-6, abs=1e-15)
    # Without a horizon the same schedule spans the run: it reaches min_lr at the run's end.
    assert _lrs(par.model_copy(update={"lr_horizon_steps": None}), run)[-1] == pytest.approx(0.1 * lr)
    with pytest.raises(ConfigError, match="actor.lr_horizon_steps=0"):
        build_section(ParallelConfig, "actor", {"lr_horizon_steps": 0})


def _openrlhf_value_loss(values, old, returns, mask, clip):
    """OpenRLHF's ValueLoss (SimpleRL v0 train/openrlhf/models/loss.py), written out."""
    clipped = old + (values - old).clamp(-clip, clip)
    loss = torch.max((clipped - returns) ** 2, (values - returns) ** 2)
    per_seq = (loss * mask).sum(-1) / mask.sum(-1)
    return 0.5 * per_seq.mean()


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_value_loss_aggregation_against_reference(agg):
    torch.manual_seed(0)
    values, old, returns = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    targets = LossTargets(loss_mask=mask, returns=returns, old_values=old)
    whole, _ = value_loss(values, targets, 0.2, LossNormalizer(tokens=float(mask.sum()), sequences=3, num_microbatches=1, dp=1), agg)
    if agg == "seq-mean-token-mean":
        expected = _openrlhf_value_loss(values, old, returns, mask.float(), 0.2)
    else:
        err = torch.max((old + (values - old).clamp(-0.2, 0.2) - returns) ** 2, (values - returns) ** 2)
        expected = 0.5 * (err * mask).sum() / mask.sum()
    assert whole.item() == pytest.approx(expected.item(), rel=1e-6)
    # Split into two micro-batches, scaled as Megatron averages them: the same mini-batch loss.
    norm = LossNormalizer(tokens=float(mask.sum()), sequences=3, num_microbatches=2, dp=1)
    parts = [value_loss(values[s], LossTargets(loss_mask=mask[s], returns=returns[s], old_values=old[s]), 0.2, norm, agg)[0]
             for s in (slice(0, 1), slice(1, 3))]
    assert (sum(parts) / 2).item() == pytest.approx(expected.item(), rel=1e-6)
    assert CriticConfig().loss_agg == "token-mean"
    with pytest.raises(ConfigError, match="critic.loss_agg='seq-sum-constant'"):
        build_section(CriticConfig, "critic", {"loss_agg": "seq-sum-constant"})


def test_template_stops_off_leaves_only_eos():
    from megarl.data import stop_strings

    class Tok:
        eos_token = "<|endoftext|>"

    assert stop_strings("qwen25-math-cot", Tok()) == ["<|im_end|>", "<|endoftext|>"]
    assert stop_strings("qwen25-math-cot", Tok(), template_stops=False) == ["<|endoftext|>"]


def test_client_caps_new_tokens_at_the_context_left():
    from megarl.rollout.client import RolloutClient, SamplingParams
    from megarl.rollout.protocol import context_length_of

    sampling = SamplingParams(max_new_tokens=16000)
    capped = RolloutClient(["http://127.0.0.1:1"], context_length=4096)
    assert capped.request_body(list(range(1000)), sampling, 1)["sampling_params"]["max_new_tokens"] == 3096
    assert capped.request_body([1, 2], SamplingParams(max_new_tokens=10), 1)["sampling_params"]["max_new_tokens"] == 10
    assert capped.request_body(list(range(4096)), sampling, 1)["sampling_params"]["max_new_tokens"] == 16000  # server rejects
    assert RolloutClient(["http://127.0.0.1:1"]).request_body([1], sampling, 1)["sampling_params"]["max_new_tokens"] == 16000
    assert context_length_of({"max_position_embeddings": 4096}) == 4096 and context_length_of({}) is None


def test_two_labelled_averages():
    from megarl.evaluation.harness import averages

    results = {"math500": {"accuracy": 0.8, "single_run": 0.8}, "aime24": {"accuracy": 0.24, "single_run": 0.4}}
    assert averages(results) == {"average (paper: one run per benchmark)": pytest.approx(0.6),
                                 "average (all samples: avg@n)": pytest.approx(0.52)}


def test_baseline_single_run_is_greedy_under_simplerl_zoo():
    from megarl.config import EvalConfig
    from megarl.evaluation.harness import adds_special_tokens, single_run_sampling

    zoo = EvalConfig(protocol="simplerl-zoo")
    assert single_run_sampling(zoo, "aime24", "qwen-boxed", baseline=True) == (0.0, 1.0)
    assert single_run_sampling(zoo, "math500", "qwen-boxed", baseline=True) == (0.0, 1.0)
    assert single_run_sampling(zoo, "aime24", "qwen-boxed", baseline=False) is None  # sample 0 is the one run
    assert single_run_sampling(EvalConfig(protocol="greedy"), "aime24", "r1", baseline=True) is None
    assert adds_special_tokens(zoo) and adds_special_tokens(EvalConfig(protocol="greedy"))
    assert not adds_special_tokens(EvalConfig())
