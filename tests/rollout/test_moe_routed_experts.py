"""Routed experts over the wire (routing replay): megarl's client asks for them with SGLang's own
request fields, and the built-in server's answer reads with SGLang's own decoder.

SGLang's io_struct and state_capturer modules need packages the CPU install lacks (torchvision), so
the test reads them from the installed sources with `ast` (the request fields of GenerateReqInput;
`extract_routed_experts_from_meta_info`, run as SGLang wrote it)."""

from __future__ import annotations

import ast
import importlib.util

import numpy as np
import pytest
from inprocess_server import InProcessServer

from megarl.models.spec import ModelSpec
from megarl.rollout import routed_experts
from megarl.rollout.client import RolloutClient, SamplingParams

pytest.importorskip("sglang")


def _source(module: str) -> ast.Module:
    return ast.parse(open(importlib.util.find_spec(module).origin).read())


def _request_fields() -> set[str]:
    for node in ast.walk(_source("sglang.srt.managers.io_struct")):
        if isinstance(node, ast.ClassDef) and node.name == "GenerateReqInput":
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    raise AssertionError("sglang's io_struct has no GenerateReqInput (sglang changed; update this test)")


def _sglang_extract():
    import pybase64

    for node in _source("sglang.srt.state_capturer.routed_experts").body:
        if isinstance(node, ast.FunctionDef) and node.name == "extract_routed_experts_from_meta_info":
            ns = {"np": np, "pybase64": pybase64}
            exec(ast.unparse(node), ns)
            return ns[node.name]
    raise AssertionError("sglang has no extract_routed_experts_from_meta_info (sglang changed; update this test)")


@pytest.fixture(scope="module")
def moe_server(tiny_hf_models):
    server = InProcessServer(str(tiny_hf_models["qwen3_moe"]))
    yield server
    server.stop()


def test_client_requests_and_server_returns_routed_experts_in_sglangs_format(moe_server, tiny_hf_models):
    spec = ModelSpec.from_hf(tiny_hf_models["qwen3_moe"])
    client = RolloutClient(moe_server.url, return_routed_experts=True)
    sampling = SamplingParams(max_new_tokens=5, temperature=1.0)
    body = client.request_body([3, 4, 5], sampling, 2)
    assert body["return_routed_experts"] is True and set(body) <= _request_fields()
    prompts = [[3, 4, 5, 6, 7], [9, 10]]
    groups = client.generate(prompts, sampling, n=2)
    extract = _sglang_extract()
    for prompt, group in zip(prompts, groups):
        for sample in group:
            theirs = extract({"meta_info": sample.meta_info})  # SGLang's reading: a flat int32 array
            seqlen = len(prompt) + len(sample.output_ids)
            ours = routed_experts.decode(sample.meta_info, spec.num_layers, spec.moe_top_k)
            assert ours.shape == (seqlen - 1, spec.num_layers, spec.moe_top_k)
            assert np.array_equal(theirs, ours.reshape(-1))
            moe = ours[:, list(spec.moe_layers)]
            assert ((moe >= 0) & (moe < spec.num_experts)).all()
            assert all(len(set(row)) == spec.moe_top_k for row in moe.reshape(-1, spec.moe_top_k).tolist())
    plain = RolloutClient(moe_server.url).generate([[3, 4]], sampling)
    assert "routed_experts" not in plain[0][0].meta_info  # only when asked, as SGLang


def test_sglang_servers_for_replay_enable_routed_experts_in_sglangs_parser():
    """Without --enable-return-routed-experts SGLang answers without routes; megarl's launcher adds
    it for routing replay, and SGLang's own ServerArgs parser reads it."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    from megarl.rollout.commands import SGLangServerSpec, sglang_server_command

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    for wanted in (True, False):
        cmd = sglang_server_command(SGLangServerSpec(model_path="model", return_routed_experts=wanted))
        args = parser.parse_args(cmd[cmd.index("--model-path"):])
        assert args.enable_return_routed_experts is wanted


def test_builtin_server_takes_weight_updates_under_the_hubs_per_expert_names(tiny_hf_models):
    """transformers fuses the experts in memory; weight sync sends the hub's per-expert names (what
    SGLang loads): the built-in engine writes them into the fused tensors."""
    import torch
    from safetensors.torch import load_file

    from megarl.rollout.engine import GenerationEngine

    path = tiny_hf_models["qwen3_moe"]
    engine = GenerationEngine(str(path))
    weights = load_file(str(path / "model.safetensors"))
    experts = {n: t for n, t in weights.items() if ".mlp.experts." in n}
    assert len(experts) == 3 * 3 * 8
    fused = dict(engine.model.named_parameters())
    before = fused["model.layers.2.mlp.experts.gate_up_proj"].clone()
    assert engine.load_weights((n, -t) for n, t in experts.items()) == len(experts)
    gate_up, down = fused["model.layers.2.mlp.experts.gate_up_proj"], fused["model.layers.2.mlp.experts.down_proj"]
    assert torch.equal(gate_up, -before)
    assert torch.equal(gate_up[5, :32], -weights["model.layers.2.mlp.experts.5.gate_proj.weight"])
    assert torch.equal(gate_up[5, 32:], -weights["model.layers.2.mlp.experts.5.up_proj.weight"])
    assert torch.equal(down[7], -weights["model.layers.2.mlp.experts.7.down_proj.weight"])
