"""Logits of converted checkpoints: megarl's model vs transformers within 1e-4 (fp32), in process
(the --verify path, at TP=1/PP=1 from a TP=2/PP=2 checkpoint) and in a real TP=2 torchrun job that
loads the checkpoint with the trainer's loader and saves it back."""

import json
from pathlib import Path

import torch
from ckpt_helpers import ARCHS, assert_same_tensors, load_megatron_files
from dist_utils import torchrun

from megarl.checkpoint import hf_to_megatron, megatron_to_hf, reshard
from megarl.checkpoint.verify import transformers_logits, verify_megatron_against_hf

JOB = Path(__file__).with_name("live_checkpoint_job.py")


def test_verify_logits_every_arch(hf_models, tmp_path):
    rows = []
    for arch in ARCHS:
        meg, back = tmp_path / f"{arch}_meg", tmp_path / f"{arch}_hf"
        hf_to_megatron(hf_models[arch], meg, tp=2, pp=2)
        megatron_to_hf(meg, back)
        # megarl's model from the Megatron checkpoint vs transformers on the original ...
        result = verify_megatron_against_hf(meg, hf_models[arch], tokens=12)
        rows.append((arch, result.max_abs_logit_diff))
        assert result.max_abs_logit_diff < 1e-4, (arch, result)
        # ... and transformers loads the exported directory and gives the original's logits.
        ids = torch.randint(0, 900, (2, 9), generator=torch.Generator().manual_seed(3))
        assert torch.equal(transformers_logits(back, ids), transformers_logits(hf_models[arch], ids)), arch
    print(rows)


def test_trainer_load_and_save_at_tp2(hf_models, tmp_path):
    src = hf_models["qwen2"]
    meg = tmp_path / "meg_tp2"
    hf_to_megatron(src, meg, tp=2, pp=1)
    hf_to_megatron(src, tmp_path / "meg_2x2", tp=2, pp=2)
    out = tmp_path / "result.json"
    torchrun(
        [str(JOB), "--meg-dir", str(meg), "--hf-dir", str(src), "--wrong-layout-dir", str(tmp_path / "meg_2x2"),
         "--save-dir", str(tmp_path / "saved"), "--critic-save-dir", str(tmp_path / "critic"), "--out", str(out), "--tp", "2", "--pp", "1"],
        nproc=2,
    )
    ranks = json.loads(out.read_text())
    diffs = [r["max_abs_logit_diff"] for r in ranks if "max_abs_logit_diff" in r]
    assert len(diffs) == 1 and diffs[0] < 1e-4, ranks
    for r in ranks:
        assert "tp=2 pp=2 but this run uses tp=2 pp=1" in r["wrong_layout_error"]
        assert "tools/reshard.py" in r["wrong_layout_error"]
    # The trainer's save writes the same files and description as the offline converter.
    a, b = load_megatron_files(meg), load_megatron_files(tmp_path / "saved")
    for path in a:
        assert_same_tensors(a[path], b[path], path)
    assert json.loads((meg / "megarl_checkpoint.json").read_text()) == json.loads((tmp_path / "saved" / "megarl_checkpoint.json").read_text())
    assert not list(tmp_path.glob("saved.tmp-*"))
    # The critic's checkpoint carries its value head, through a reshard too.
    assert all(r["critic_params_equal"] for r in ranks), ranks
    critic_files = load_megatron_files(tmp_path / "critic")
    assert critic_files["mp_rank_00_000/model.safetensors"]["output_layer.weight"].shape == (1, 64)
    reshard(tmp_path / "critic", tmp_path / "critic_1x2", tp=1, pp=2)
    head = load_megatron_files(tmp_path / "critic_1x2")["mp_rank_00_001/model.safetensors"]["output_layer.weight"]
    assert torch.equal(head, critic_files["mp_rank_01_000/model.safetensors"]["output_layer.weight"])
