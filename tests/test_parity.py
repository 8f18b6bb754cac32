"""Megatron actor vs transformers: logits at TP=1, TP=2, PP=2, TP2xPP2 (real torchrun over gloo),
and one SGD training step giving the same weights at every layout."""

import json

import pytest
import torch
from dist_utils import torchrun
from safetensors.torch import load_file

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
ARCHS = ("qwen2", "llama", "mistral")


@pytest.fixture(scope="module")
def parity_runs(tiny_hf_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    runs = {}
    for tp, pp in LAYOUTS:
        out, train_out = root / f"tp{tp}pp{pp}.json", root / f"train_tp{tp}pp{pp}"
        args = ["-m", "megarl.models.parity", "--tp", str(tp), "--pp", str(pp), "--out", str(out), "--train-out", str(train_out)]
        for arch in ARCHS:
            args += ["--hf-dir", str(tiny_hf_models[arch])]
        torchrun(args, nproc=tp * pp)
        runs[(tp, pp)] = {"rows": {r["model"]: r for r in json.loads(out.read_text())}, "weights": train_out}
    return runs


def test_logits_match_transformers(parity_runs):
    table = ["| model | layout | max abs logit diff |", "|---|---|---|"]
    for (tp, pp), run in parity_runs.items():
        assert set(run["rows"]) == set(ARCHS)
        for arch, row in run["rows"].items():
            table.append(f"| {arch} | TP={tp} PP={pp} | {row['max_abs_logit_diff']:.2e} |")
            assert row["max_abs_logit_diff"] < 1e-4, (arch, tp, pp, row)
    print("\n" + "\n".join(table))


@pytest.mark.parametrize("layout", [(2, 1), (1, 2), (2, 2)])
def test_training_step_matches_single_process(parity_runs, tiny_hf_models, layout):
    base_dir, other_dir = parity_runs[(1, 1)]["weights"], parity_runs[layout]["weights"]
    for arch in ARCHS:
        base = load_file(str(base_dir / f"{arch}.safetensors"))
        other = load_file(str(other_dir / f"{arch}.safetensors"))
        original = load_file(str(tiny_hf_models[arch] / "model.safetensors"))
        assert set(base) == set(other) == set(original)
        moved = max((base[k] - original[k]).abs().max().item() for k in base)
        assert moved > 1e-3, f"{arch}: the SGD step did not change the weights"
        for name in base:
            torch.testing.assert_close(other[name], base[name], rtol=0, atol=1e-5, msg=f"{arch} {name} at {layout}")
        # The loss and gradient norm agree too.
        a, b = parity_runs[(1, 1)]["rows"][arch], parity_runs[layout]["rows"][arch]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
