"""Qwen3-MoE: megarl's Megatron actor (megatron-core's MoE layer, all-to-all dispatcher over gloo)
against transformers' Qwen3MoeForCausalLM at EP1, EP2 and TP2xEP2 (with sequence parallelism, which
Megatron requires for MoE under TP): logits, a bitwise export of the loaded weights back to the
hub's per-expert names, and one SGD step giving the same weights at every layout (TP2xEP2 through
Megatron's distributed optimizer, which shards dense and expert parameters over different groups)."""

import json

import pytest
import torch
from dist_utils import torchrun
from safetensors.torch import load_file
from tiny_models import make_tiny_hf

LAYOUTS = [(1, 1), (1, 2), (2, 2)]  # (tp, ep)


@pytest.fixture(scope="module")
def moe_models(tiny_hf_models, tmp_path_factory):
    """The tiny Qwen3-MoE (top-2 of 8 renormalized, layer 1 dense) and a variant without
    renormalization whose MoE layers are every second one (decoder_sparse_step=2)."""
    root = tmp_path_factory.mktemp("moe")
    sparse2 = make_tiny_hf("qwen3_moe", root / "sparse2", seed=1, norm_topk_prob=False, decoder_sparse_step=2,
                           mlp_only_layers=[])
    return {"renorm": tiny_hf_models["qwen3_moe"], "sparse2": sparse2}


@pytest.fixture(scope="module")
def moe_runs(moe_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_parity")
    runs = {}
    for tp, ep in LAYOUTS:
        out, train_out = root / f"tp{tp}ep{ep}.json", root / f"train_tp{tp}ep{ep}"
        args = ["-m", "megarl.train.parity", "--tp", str(tp), "--ep", str(ep), "--out", str(out),
                "--train-out", str(train_out), "--hf-dir", str(moe_models["renorm"])]
        args += ["--sequence-parallel", "--distributed-optimizer"] if tp > 1 else []
        if (tp, ep) == (1, 2):
            args += ["--hf-dir", str(moe_models["sparse2"])]
        torchrun(args, nproc=tp * ep)
        runs[(tp, ep)] = {"rows": json.loads(out.read_text()), "weights": train_out}
    return runs


def test_moe_logits_match_transformers_and_export_is_bitwise(moe_runs):
    table = []
    for (tp, ep), run in moe_runs.items():
        for row in run["rows"]:
            table.append(f"| {row['model']} {row['hf_dir'].rsplit('/', 1)[-1]} | TP={tp} EP={ep} | {row['max_abs_logit_diff']:.2e} |")
            assert row["max_abs_logit_diff"] < 1e-4, (tp, ep, row)
            assert row["export_bitwise"], (tp, ep, row)
    assert len(table) == 4
    print("\n" + "\n".join(table))


@pytest.mark.parametrize("layout", [(1, 2), (2, 2)])
def test_moe_training_step_matches_single_process(moe_runs, moe_models, layout):
    """Expert gradients come from every DP rank's tokens (the all-to-all); Megatron scales them by
    the expert-data-parallel size: the step equals the single-process one."""
    base = load_file(str(moe_runs[(1, 1)]["weights"] / "qwen3_moe.safetensors"))
    other = load_file(str(moe_runs[layout]["weights"] / "qwen3_moe.safetensors"))
    original = load_file(str(moe_models["renorm"] / "model.safetensors"))
    assert set(base) == set(other) == set(original)
    experts = [k for k in base if ".mlp.experts." in k]
    assert len(experts) == 3 * 3 * 8  # gate/up/down x 3 MoE layers x 8 experts, under the hub's names
    assert max((base[k] - original[k]).abs().max().item() for k in experts) > 1e-4, "the step did not move the experts"
    assert max((base[k] - original[k]).abs().max().item() for k in base if k.endswith("mlp.gate.weight")) > 1e-4
    for name in base:
        torch.testing.assert_close(other[name], base[name], rtol=0, atol=1e-5, msg=f"{name} at TP,EP={layout}")
    a, b = moe_runs[(1, 1)]["rows"][0], moe_runs[layout]["rows"][0]
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
