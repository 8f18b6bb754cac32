"""Token in, token out through training: a multi-turn sample's tool tokens are context only.

The packed row holds every token as generated (the model's and the tool's), the loss, its gradient,
the token count that normalizes it, the estimators and the behaviour log-probs see the model's
tokens alone.
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from megarl.algorithms.losses import LossNormalizer, actor_loss
from megarl.config import AlgorithmConfig
from megarl.train.batch import TrainSequence, build_microbatches
from megarl.train.stages.advantages import token_advantages
from megarl.train.stages.logprobs import OldLogprobPlan, SequenceTensors
from megarl.train.stages.update import attach_targets, loss_normalizer

CPU = torch.device("cpu")
# prompt 4 tokens; response: 3 model tokens, 4 tool tokens, 2 model tokens
PROMPT = [11, 12, 13, 14]
RESPONSE = [21, 22, 23, 31, 32, 33, 34, 24, 25]
MASK = [1, 1, 1, 0, 0, 0, 0, 1, 1]


@pytest.fixture(scope="module", autouse=True)
def runtime():
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)


def _seqs():
    tool = TrainSequence(prompt_ids=PROMPT, response_ids=RESPONSE, reward=1.0, group=0, loss_mask=MASK,
                         behaviour_logp=[-0.5, -0.6, -0.7, -0.8, -0.9], advantage=1.0)
    plain = TrainSequence(prompt_ids=[15, 16], response_ids=[41, 42, 43], reward=0.0, group=0, advantage=-1.0,
                          behaviour_logp=[-1.0, -1.1, -1.2])
    return [tool, plain]


def test_the_packed_row_holds_the_generated_tokens_and_predicts_only_the_models():
    seqs = _seqs()
    (mb,) = build_microbatches(seqs, budget=64, device=CPU)
    b = mb.seq_ids.index(0)
    row = mb.input_ids[0].tolist()
    start = sum(seqs[i].length for i in mb.seq_ids[:b])
    assert row[start:start + seqs[0].length] == PROMPT + RESPONSE  # training tokens == generation tokens
    assert mb.resp_mask[b, :len(MASK)].tolist() == [bool(m) for m in MASK]
    predicted = mb.logit_labels.tolist()  # the labels whose logits the loss reads
    model_tokens = [t for t, m in zip(RESPONSE, MASK) if m]
    assert all(t in predicted for t in model_tokens) and not any(t in predicted for t in (31, 32, 33, 34))
    assert seqs[0].model_tokens == 5


def _loss(logits, mb, algo, norm):
    from megarl.train.workers import response_logprobs

    spec = types.SimpleNamespace(vocab_size=logits.shape[-1])
    logp, entropy = response_logprobs(logits, mb, spec, 1.0)
    return actor_loss(logp, entropy, mb.targets, algo, norm)


@pytest.mark.parametrize("name,agg", [("grpo", "token-mean"), ("drgrpo", "seq-sum-constant"), ("grpo", "seq-mean-token-mean")])
def test_changing_tool_token_logits_changes_neither_loss_nor_other_gradients(name, agg):
    algo = AlgorithmConfig(name=name, loss_agg=agg, loss_constant=16, kl_coef=0.1, entropy_coef=0.01)
    seqs = _seqs()
    (mb,) = build_microbatches(seqs, budget=64, device=CPU)
    tensors = [SequenceTensors(old_logp=torch.full((len(s.response_ids),), -0.7), ref_logp=torch.full((len(s.response_ids),), -0.6),
                               advantages=torch.full((len(s.response_ids),), s.advantage)) for s in seqs]
    (mb,) = attach_targets([mb], seqs, tensors, algo)
    norm = loss_normalizer(seqs, 1, None, 1)
    assert norm.tokens == 5 + 3  # model tokens only: the mask-aware length token-level aggregation divides by
    torch.manual_seed(0)
    logits = torch.randn(1, mb.input_ids.shape[1], 64, requires_grad=True)
    loss, stats = _loss(logits, mb, algo, norm)
    loss.backward()
    b = mb.seq_ids.index(0)
    tool_positions = [int(mb.resp_index[b, t]) for t, m in enumerate(MASK) if not m]
    assert stats["tokens"].item() == 8
    assert logits.grad[0, tool_positions].abs().sum() == 0  # no gradient reaches the tool tokens' predictions
    assert logits.grad.abs().sum() > 0
    changed = logits.detach().clone()
    changed[0, tool_positions] += 5 * torch.randn(len(tool_positions), 64)
    changed.requires_grad_(True)
    loss2, _ = _loss(changed, mb, algo, norm)
    assert loss2.item() == loss.item()


def test_advantages_skip_tool_tokens_and_behaviour_logprobs_go_to_model_tokens():
    algo = AlgorithmConfig(name="reinforce_pp", kl_coef=0.0)
    seqs = _seqs()
    tensors = [SequenceTensors(old_logp=torch.zeros(len(s.response_ids))) for s in seqs]
    plan = OldLogprobPlan(single_pass=False, ratio_vs_behaviour=True, recompute=False)
    out = token_advantages(seqs, tensors, algo, plan)
    adv = out[0].advantages
    assert adv.shape == (9,) and adv[3:7].abs().sum() == 0
    assert out[0].behaviour_logp.tolist() == pytest.approx([-0.5, -0.6, -0.7, 0, 0, 0, 0, -0.8, -0.9])
    assert out[0].loss_mask.tolist() == [bool(m) for m in MASK]
    # The same sequence with the tool tokens cut out gets the same advantages at its model tokens.
    cut = dataclasses.replace(seqs[0], response_ids=[t for t, m in zip(RESPONSE, MASK) if m], loss_mask=None)
    ref = token_advantages([cut, seqs[1]], [SequenceTensors(old_logp=torch.zeros(5)), tensors[1]], algo, plan)
    assert adv[torch.tensor(MASK, dtype=torch.bool)].tolist() == pytest.approx(ref[0].advantages.tolist())


def test_an_importance_correction_reads_model_tokens_only():
    algo = AlgorithmConfig(name="grpo", importance_correction="tis")
    seqs = _seqs()
    tensors = [SequenceTensors(old_logp=torch.full((len(s.response_ids),), -0.7), advantages=torch.ones(len(s.response_ids)))
               for s in seqs]
    plan = OldLogprobPlan(single_pass=False, ratio_vs_behaviour=False, recompute=True)
    tensors = token_advantages(seqs, tensors, algo, plan)
    (mb,) = attach_targets(build_microbatches(seqs, budget=64, device=CPU), seqs, tensors, algo)
    b = mb.seq_ids.index(0)
    assert mb.targets.loss_mask[b, :9].tolist() == [bool(m) for m in MASK]
    assert torch.isfinite(mb.targets.is_weights).all()
