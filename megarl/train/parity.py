"""Parity check: megarl's Megatron actor vs transformers on the same HF checkpoint, at any TP/PP.

Run under torchrun (one process per rank):
    torchrun --nproc-per-node 4 -m megarl.train.parity --hf-dir MODEL --tp 2 --pp 2 --out parity.json
    torchrun --nproc-per-node 2 -m megarl.train.parity --hf-dir MODEL --tp 2 --sequence-parallel --out sp.json
    torchrun --nproc-per-node 2 -m megarl.train.parity --hf-dir MODEL --tp 2 --dtype bf16 --out bf16.json
    torchrun --nproc-per-node 4 -m megarl.train.parity --hf-dir MOE_MODEL --tp 2 --ep 2 --sequence-parallel --out moe.json

It reports the max |logit difference| against transformers' model in the same dtype, and with
`--train-out DIR` also takes one SGD step through Megatron DDP + optimizer and saves the updated
weights in HF layout as DIR/<model directory name>.safetensors (so layouts can be compared with each other). In bf16 it also reports both
bf16 models against transformers in fp32 (`max_abs_logit_diff_vs_fp32`, `hf_max_abs_logit_diff_vs_fp32`):
the rounding that bf16 itself costs, for scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

import torch


def _batch(vocab: int, micro_batches: int, micro_batch_size: int, seq: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (micro_batches, micro_batch_size, seq + 1), generator=g)
    pos = torch.arange(seq).expand(micro_batch_size, seq)
    from megarl.models.pipeline import ModelInput

    return [ModelInput(input_ids=x[:, :-1].contiguous(), labels=x[:, 1:].contiguous(), position_ids=pos) for x in ids]


def _gather_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    from megatron.core import tensor_parallel

    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)[..., :vocab]


def check_one(hf_dir: Path, train_out: Path | None, seq: int = 16, sequence_parallel: bool = False,
              dtype: torch.dtype = torch.float32, distributed_optimizer: bool = False) -> dict:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from megarl.models.build import build_model
    from megarl.models.export import gather_hf_tensors
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.pipeline import run_pipeline
    from megarl.models.spec import ModelSpec
    from megarl.models.training import wrap_for_training, zero_grads

    spec = ModelSpec.from_hf(hf_dir)
    model = build_model(spec, dtype=dtype, sequence_parallel=sequence_parallel)
    load_hf_into_model(model, hf_dir)
    model.eval()
    batches = _batch(spec.vocab_size, micro_batches=2, micro_batch_size=2, seq=seq)
    device = next(model.parameters()).device
    batches = [dataclasses.replace(mb, input_ids=mb.input_ids.to(device), labels=mb.labels.to(device),
                                   position_ids=mb.position_ids.to(device)) for mb in batches]

    def keep_logits(output, mb):
        return output.sum() * 0.0, {"logits": _gather_vocab(output, spec.vocab_size).detach()}

    with torch.no_grad():
        stats = run_pipeline([model], batches, keep_logits, forward_only=True)
    result = {"model": spec.model_type, "hf_dir": str(hf_dir), "dtype": str(dtype).removeprefix("torch.")}
    reporter = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    from megarl.runtime import collectives

    reporter_rank = collectives.all_gather_objects(torch.distributed.get_rank() if reporter else None)
    reporter_rank = next(r for r in reporter_rank if r is not None)
    # Export before any training: the HF tensors gathered from every TP/PP/EP rank equal the
    # checkpoint's bitwise (the load and the export are pure indexing).
    exported = {name: t.clone() for name, t in gather_hf_tensors(model, dst=reporter_rank)}
    if reporter:
        from megarl.models.hf_io import HFCheckpoint

        ckpt = HFCheckpoint(hf_dir)
        result["export_bitwise"] = set(exported) == set(ckpt.names()) and all(
            torch.equal(t.cpu(), ckpt.get(name).to(t.dtype)) for name, t in exported.items())
        ckpt.close()
    if reporter:
        from transformers import AutoModelForCausalLM

        refs = {"": AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()}
        if dtype != torch.float32:
            refs["_vs_fp32"] = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        for suffix, ref in refs.items():
            diff = hf_diff = 0.0
            with torch.no_grad():
                for mb, st in zip(batches, stats):
                    expected = ref(mb.input_ids.cpu()).logits.float()
                    diff = max(diff, (st["logits"].cpu().float() - expected).abs().max().item())
                    if suffix:
                        same = refs[""](mb.input_ids.cpu()).logits.float()
                        hf_diff = max(hf_diff, (same - expected).abs().max().item())
            result[f"max_abs_logit_diff{suffix}"] = diff
            if suffix:
                result[f"hf_max_abs_logit_diff{suffix}"] = hf_diff

    if train_out is not None:
        model.train()
        ddp, optimizer = wrap_for_training(model, _step_config(distributed_optimizer))
        zero_grads(ddp, optimizer)

        def ce_loss(output, mb):
            losses = tensor_parallel.vocab_parallel_cross_entropy(output.float().transpose(0, 1).contiguous(), mb.labels.t().contiguous())
            loss = losses.mean()
            return loss, {"loss": loss.detach().clone()}

        stats = run_pipeline([ddp], batches, ce_loss, forward_only=False)
        ok, grad_norm, _ = optimizer.step()
        weights = {name: t.clone() for name, t in gather_hf_tensors(ddp)}
        if torch.distributed.get_rank() == 0:
            from safetensors.torch import save_file

            train_out.mkdir(parents=True, exist_ok=True)
            save_file(weights, str(train_out / f"{Path(hf_dir).name}.safetensors"))  # named by the model directory
        if reporter:
            result["train_loss"] = sum(s["loss"].item() for s in stats) / len(stats)
            result["grad_norm"] = float(grad_norm)
    return result if reporter else {}


# Megatron's distributed optimizer takes Adam only. Adam's first step moves each weight by
# lr * g / (|g| + eps); with eps far above every |g| (about 0.1 here) that is SGD with lr / eps, to
# within |g| / eps relative (1e-5): the layouts' steps stay comparable with the SGD ones.
_ADAM_AS_SGD_EPS = 1e4


def _step_config(distributed_optimizer: bool):
    from megarl.config import ParallelConfig

    if not distributed_optimizer:
        return ParallelConfig(optimizer="sgd", lr=0.5, clip_grad=0.0)
    return ParallelConfig(optimizer="adam", lr=0.5 * _ADAM_AS_SGD_EPS, adam_eps=_ADAM_AS_SGD_EPS, clip_grad=0.0,
                          distributed_optimizer=True)


def main(argv=None) -> int:
    from megarl.train.workers import DTYPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", action="append", required=True, help="HF model directory (repeatable)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1, help="expert parallelism (MoE models)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--train-out", type=Path, default=None, help="also take one SGD step; save weights here")
    parser.add_argument("--sequence-parallel", action="store_true", help="Megatron sequence parallelism (with tp > 1)")
    parser.add_argument("--distributed-optimizer", action="store_true", help="the training step through Megatron's distributed optimizer")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="the Megatron model's dtype (as model.dtype)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from megarl.runtime import collectives
    from megarl.runtime.distributed import init_runtime, shutdown_runtime

    rt = init_runtime(tp=args.tp, pp=args.pp, ep=args.ep, seed=1234)
    results = [check_one(Path(d), args.train_out, sequence_parallel=args.sequence_parallel, dtype=DTYPES[args.dtype],
                         distributed_optimizer=args.distributed_optimizer)
               for d in args.hf_dir]
    gathered = collectives.all_gather_objects(results)
    if rt.is_main:
        rows = [r for per_rank in gathered for r in per_rank if r]
        for row in rows:
            row.update(tp=args.tp, pp=args.pp, ep=args.ep)
        args.out.write_text(json.dumps(rows, indent=2))
    shutdown_runtime()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
