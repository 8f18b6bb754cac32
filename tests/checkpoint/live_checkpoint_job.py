"""torchrun job for tests/checkpoint/test_live.py: load a converted megarl checkpoint into the live
TP/PP model, compare its logits with transformers, save it back with save_megatron_checkpoint,
and try loading a checkpoint of another layout (must fail with a reshard hint)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meg-dir", type=Path, required=True)
    parser.add_argument("--hf-dir", type=Path, required=True)
    parser.add_argument("--wrong-layout-dir", type=Path, required=True)
    parser.add_argument("--save-dir", type=Path, required=True)
    parser.add_argument("--critic-save-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from megatron.core import parallel_state as ps

    from megarl.checkpoint.live import load_megatron_checkpoint, save_megatron_checkpoint
    from megarl.models.build import build_model
    from megarl.train.parity import _batch, _gather_vocab
    from megarl.models.pipeline import run_pipeline
    from megarl.models.spec import ModelSpec
    from megarl.runtime.distributed import init_runtime, shutdown_runtime

    rt = init_runtime(tp=args.tp, pp=args.pp, seed=1)
    spec = ModelSpec.from_hf(args.hf_dir)
    model = build_model(spec).eval()
    stats = load_megatron_checkpoint(model, args.meg_dir)
    batches = _batch(spec.vocab_size, micro_batches=1, micro_batch_size=2, seq=12)

    def keep_logits(output, mb):
        return output.sum() * 0.0, {"logits": _gather_vocab(output, spec.vocab_size).detach()}

    with torch.no_grad():
        outputs = run_pipeline([model], batches, keep_logits, forward_only=True)
    result = {"loaded_params": stats["params"]}
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            expected = ref(batches[0].input_ids).logits
        result["max_abs_logit_diff"] = (outputs[0]["logits"].cpu() - expected).abs().max().item()

    save_megatron_checkpoint(model, args.save_dir, args.meg_dir / "hf")
    try:
        load_megatron_checkpoint(model, args.wrong_layout_dir)
        result["wrong_layout_error"] = None
    except ValueError as err:
        result["wrong_layout_error"] = str(err)

    # A critic starts from the actor checkpoint (fresh value head), saves its trained head, and a
    # critic built with another head seed gets that head back on load.
    critic = build_model(spec, role="critic", value_head_seed=1)
    load_megatron_checkpoint(critic, args.meg_dir)
    if ps.is_pipeline_last_stage():
        with torch.no_grad():
            critic.output_layer.weight.add_(0.5)  # stands in for training the head
    save_megatron_checkpoint(critic, args.critic_save_dir, args.meg_dir / "hf")
    other = build_model(spec, role="critic", value_head_seed=2)
    load_megatron_checkpoint(other, args.critic_save_dir)
    result["critic_params_equal"] = all(
        torch.equal(a, b) for a, b in zip(critic.parameters(), other.parameters(), strict=True)
    )

    gathered = [None] * rt.world_size
    torch.distributed.all_gather_object(gathered, result)
    if rt.is_main:
        args.out.write_text(json.dumps(gathered))
    shutdown_runtime()


if __name__ == "__main__":
    main()
