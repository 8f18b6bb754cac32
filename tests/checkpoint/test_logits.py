"""Logits of converted checkpoints: megarl's model from the torch_dist checkpoint vs transformers
within 1e-4 (fp32), in process (the --verify path), and transformers on the exported HF directory."""

import torch
from ckpt_helpers import ARCHS

from megarl.checkpoint import hf_to_torch_dist, torch_dist_to_hf
from megarl.checkpoint.verify import transformers_logits, verify_torch_dist_against_hf


def test_verify_logits_every_arch(hf_models, tmp_path):
    rows = []
    for arch in ARCHS:
        root, back = tmp_path / f"{arch}_mcore", tmp_path / f"{arch}_hf"
        hf_to_torch_dist(hf_models[arch], root, vocab_tp=2)
        torch_dist_to_hf(root, back)
        # megarl's model from the torch_dist checkpoint vs transformers on the original ...
        result = verify_torch_dist_against_hf(root, hf_models[arch], tokens=12)
        rows.append((arch, result.max_abs_logit_diff))
        assert result.max_abs_logit_diff < 1e-4, (arch, result)
        # ... and transformers loads the exported directory and gives the original's logits.
        ids = torch.randint(0, 900, (2, 9), generator=torch.Generator().manual_seed(3))
        assert torch.equal(transformers_logits(back, ids), transformers_logits(hf_models[arch], ids)), arch
    print(rows)
