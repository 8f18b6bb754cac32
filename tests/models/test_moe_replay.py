"""Routing replay (R3): the built-in rollout engine records each token's top-k experts per MoE layer
in SGLang's format; megarl's Megatron actor, given the same weights and tokens, routes exactly as the
rollout did; after the router has moved, replay routes training by the rollout's experts
(moe/router_mismatch 0) where without it training routes elsewhere; under full recomputation the
recomputed forward inside backward replays the same routes (the gradients equal those without
recomputation)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megarl.models import router_replay
from megarl.rollout import routed_experts


@pytest.fixture(scope="module")
def moe_dir(tiny_hf_models):
    return tiny_hf_models["qwen3_moe"]


@pytest.fixture(scope="module")
def rollout(moe_dir):
    """One greedy generation from the built-in engine with its routed experts, in SGLang's wire format."""
    from megarl.rollout.engine import GenerationEngine, SequenceRequest
    from megarl.rollout.protocol import SamplingParams

    engine = GenerationEngine(str(moe_dir))
    sampling = SamplingParams.from_request({"max_new_tokens": 7, "temperature": 0.0})
    prompt = [5, 17, 300, 42, 9, 11]
    (res,) = engine.generate([SequenceRequest(input_ids=prompt, sampling=sampling, return_routed_experts=True)])
    meta = {"routed_experts": routed_experts.encode(res.routed_experts.numpy())}
    return prompt + res.output_ids, meta, engine


def _model(moe_dir, recompute=None):
    from megarl.models.build import build_model
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.spec import ModelSpec
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)
    spec = ModelSpec.from_hf(moe_dir)
    model = build_model(spec, recompute=recompute)
    load_hf_into_model(model, moe_dir)
    return model, spec


def _input(tokens, routes=None):
    from megarl.models.pipeline import ModelInput

    ids = torch.tensor([tokens])
    return ModelInput(input_ids=ids, position_ids=torch.arange(len(tokens)).unsqueeze(0),
                      labels=torch.tensor([tokens[1:] + [0]]), routes=routes)


def _forward(model, mb, train=False):
    from megarl.models.pipeline import run_pipeline

    def step(output, mb):
        loss = output.float().log_softmax(-1).mean() if train else output.sum() * 0.0
        return loss, {"logits": output.detach().clone()}

    router_replay.start_recording(model)
    if train:
        stats = run_pipeline([model], [mb], step, forward_only=False)
    else:
        with torch.no_grad():
            stats = run_pipeline([model], [mb], step, forward_only=True)
    (routes,) = router_replay.recorded_routes(model)
    return routes, stats[0]["logits"]


def test_engine_returns_sglang_format_and_training_routes_equal_the_rollouts(rollout, moe_dir):
    tokens, meta, engine = rollout
    model, spec = _model(moe_dir)
    routed = routed_experts.decode(meta, spec.num_layers, spec.moe_top_k)
    assert routed.shape == (len(tokens) - 1, spec.num_layers, spec.moe_top_k)  # SGLang: positions [0, seqlen - 1)
    dense = [i for i in range(spec.num_layers) if not spec.is_moe_layer(i)]
    assert (routed[:, dense] == -1).all() and (routed[:, list(spec.moe_layers)] >= 0).all()
    mine, _ = _forward(model, _input(tokens))  # Megatron's own routing, no targets
    rollout_routes = torch.from_numpy(routed[:, list(spec.moe_layers)].copy())
    assert torch.equal(mine[:-1].sort(-1).values, rollout_routes.long().sort(-1).values)
    router_replay.reset(model)


def test_replay_routes_by_the_rollout_after_the_router_moved(rollout, moe_dir):
    tokens, meta, _ = rollout
    model, spec = _model(moe_dir)
    routes = routed_experts.sample_routes(routed_experts.decode(meta, spec.num_layers, spec.moe_top_k),
                                          spec.moe_layers, len(tokens))
    assert (routes[-1] == -1).all() and (routes[:-1] >= 0).all()
    with torch.no_grad():  # the policy moved: its routers now choose differently for some tokens
        g = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if name.endswith("mlp.router.weight"):
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.5)
    mb = _input(tokens, routes.unsqueeze(0))
    router_replay.set_replay(model, False)
    drifted, _ = _forward(model, mb)
    off = router_replay.metrics(model)
    router_replay.reset(model)
    router_replay.set_replay(model, True)
    replayed, _ = _forward(model, mb)
    on = router_replay.metrics(model)
    router_replay.reset(model)
    assert torch.equal(replayed[:-1], routes[:-1].long())  # training routed every token as the rollout did
    assert off["moe/router_mismatch"] > 0.05 and on["moe/router_mismatch"] == 0.0
    assert on["moe/router_drift"] == off["moe/router_drift"] == off["moe/router_mismatch"]
    assert not torch.equal(drifted[:-1], routes[:-1].long())
    assert all(f"moe/load_imbalance/layer{i}" in on for i in spec.moe_layers)


def test_full_recompute_replays_the_same_routes_in_backward(rollout, moe_dir):
    tokens, meta, _ = rollout
    grads = {}
    for recompute in (None, "full"):
        model, spec = _model(moe_dir, recompute=recompute)
        routes = routed_experts.sample_routes(routed_experts.decode(meta, spec.num_layers, spec.moe_top_k),
                                              spec.moe_layers, len(tokens))
        # Targets that the router would never choose by itself (its least likely experts), so a
        # recomputation that routed on its own would give other gradients.
        flipped = torch.where(routes >= 0, (routes + spec.num_experts // 2) % spec.num_experts, routes)
        model.train()
        _forward(model, dataclasses.replace(_input(tokens), routes=flipped.unsqueeze(0)), train=True)
        assert router_replay.metrics(model)["moe/router_mismatch"] == 0.0
        grads[recompute] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert all(not r.backward_targets for _, r in router_replay.layer_replays(model))  # every recompute replayed
        router_replay.reset(model)
    assert grads[None].keys() == grads["full"].keys() and len(grads[None]) > 10
    for name in grads[None]:
        torch.testing.assert_close(grads["full"][name], grads[None][name], rtol=0, atol=1e-6, msg=name)


def test_routes_travel_with_samples_through_thd_packing(rollout, moe_dir):
    """TrainSequence carries its routes (JSON-safe); build_microbatches packs them with the tokens of
    one THD row (-1 for padding); the packed micro-batch replays them (after the router moved)."""
    from megarl.train.batch import TrainSequence, build_microbatches
    from megarl.models.pipeline import run_pipeline

    tokens, meta, _ = rollout
    model, spec = _model(moe_dir)
    encoded = routed_experts.from_sample(meta, spec, len(tokens))
    seqs = [TrainSequence(prompt_ids=tokens[:6], response_ids=tokens[6:], reward=1.0, group=0, routes=encoded),
            TrainSequence(prompt_ids=tokens[:4], response_ids=tokens[4:-2], reward=0.0, group=0,
                          routes=routed_experts.from_sample(meta, spec, len(tokens) - 2))]
    (mb,) = build_microbatches(seqs, budget=64, device=torch.device("cpu"))
    width = len(spec.moe_layers) * spec.moe_top_k
    assert mb.routes.shape == (1, mb.input_ids.shape[1], width)
    expected = torch.cat([routed_experts.per_token(s.routes, s.length, width) for s in seqs])
    assert torch.equal(mb.routes[0, :expected.shape[0]], expected) and (mb.routes[0, expected.shape[0]:] == -1).all()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.router.weight"):
                p.mul_(-1.0)  # the router now prefers other experts everywhere
    router_replay.start_recording(model)
    with torch.no_grad():
        run_pipeline([model], [mb], lambda out, m: (out.sum() * 0.0, {}), forward_only=True)
    (routed,) = router_replay.recorded_routes(model)
    known = (expected >= 0).all(-1)
    flat = expected.view(-1, len(spec.moe_layers), spec.moe_top_k)
    assert torch.equal(routed[: expected.shape[0]][known], flat[known].long())
    stats = router_replay.metrics(model)
    assert stats["moe/router_mismatch"] == 0.0 and stats["moe/router_drift"] > 0.5
    router_replay.reset(model)
