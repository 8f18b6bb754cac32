"""`--verify` for the conversion tools: forward a few tokens through both sides and report the max
logit difference.

The Megatron side is megarl's own actor at TP=1/PP=1 in this process (a world of one), filled
with the HF-layout tensors read from a torch_dist checkpoint through the mapping (any layout);
the HF side is transformers' AutoModelForCausalLM. Both run in fp32, so the difference measures
the conversion, not the storage dtype. Needs memory for two fp32 copies of the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import torch


@dataclasses.dataclass
class VerifyResult:
    max_abs_logit_diff: float
    tokens: int
    reference: str
    candidate: str


def _input_ids(vocab: int, tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def megarl_logits(spec, hf_tensors: Iterable[tuple[str, torch.Tensor]], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [b, s, vocab] of megarl's actor (TP=1, PP=1, fp32) with the given HF tensors."""
    from megarl.models.build import build_model, layer_impl
    from megarl.models.mapping import stage_mappings
    from megarl.runtime.device import get_device
    from megarl.runtime.distributed import init_runtime

    init_runtime(tp=1, pp=1)
    model = build_model(spec, dtype=torch.float32).eval()
    tensors = {name: t for name, t in hf_tensors}
    params = dict(model.named_parameters())
    for name, mapping in stage_mappings(spec, 0, 1, layer_impl=layer_impl()):
        params[name].copy_(mapping.to_megatron_shard([tensors[h].float() for h in mapping.hf], 0, 1, spec))
    del tensors
    device = get_device()
    ids = input_ids.to(device)
    positions = torch.arange(ids.shape[1], device=device).expand_as(ids)
    return model(ids, positions, None).float()[..., : spec.vocab_size].cpu()


@torch.no_grad()
def transformers_logits(hf_dir: str | Path, input_ids: torch.Tensor, round_to: torch.dtype | None = None) -> torch.Tensor:
    """Logits of transformers' model in fp32; `round_to` first rounds its weights to that dtype
    (so an fp32 HF model compares fairly with a bf16 conversion of it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if round_to is not None:
        for param in model.parameters():
            param.copy_(param.to(round_to).float())
    return model(input_ids).logits.float()


def verify_torch_dist_against_hf(src: str | Path, hf_dir: str | Path, tokens: int = 16,
                                 hf_assets: str | Path | None = None) -> VerifyResult:
    """Max |logit difference| between megarl's model from the torch_dist checkpoint `src` and
    transformers on `hf_dir` (its weights rounded to the checkpoint's dtype first)."""
    from megarl.checkpoint.convert import open_torch_dist_model

    spec, _, _, tensors, reader = open_torch_dist_model(src, hf_assets, as_runs=False)
    try:
        stored = {name: t for name, t in tensors}
    finally:
        reader.close()
    ids = _input_ids(spec.vocab_size, tokens)
    dtype = next(iter(stored.values())).dtype
    ours = megarl_logits(spec, stored.items(), ids)
    theirs = transformers_logits(hf_dir, ids, round_to=dtype)
    return VerifyResult((ours - theirs).abs().max().item(), tokens, f"transformers:{hf_dir}", f"megarl:{src}")
