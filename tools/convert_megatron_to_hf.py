"""Convert a Megatron checkpoint into a standard Hugging Face model directory: a megarl Megatron
checkpoint (any TP/PP layout) or a torch_dist checkpoint (Megatron-LM / Megatron-Bridge root with
latest_checkpointed_iteration.txt, an iter_NNNNNNN/ folder, or a megarl resume checkpoint's
step_N/; --format auto tells them apart). A torch_dist checkpoint takes its config.json and
tokenizer from <root>/hf/ or --hf-assets (the HF model it was made from).

Writes sharded `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`, config.json
(dtype set to the output dtype) and the tokenizer files kept in the checkpoint's hf/ folder;
transformers' AutoModelForCausalLM.from_pretrained and SGLang load the result. Vocab padding is
removed, fused qkv / gate-up tensors are split, the tied output layer is not duplicated.

Example:
    python tools/convert_megatron_to_hf.py --megatron-dir ckpt/step_500 --out hf/qwen1.5b_step500 --max-shard-size 4GB --verify
    python tools/convert_megatron_to_hf.py --megatron-dir mlm_ckpt/ --hf-assets ~/models/Qwen2.5-7B --out hf/qwen7b_mlm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarl.checkpoint.convert import DEFAULT_HF_SHARD_BYTES, megatron_to_hf
from megarl.checkpoint.tool_cli import parse_size, add_common_flags, finish, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-dir", type=Path, required=True, help="megarl Megatron checkpoint or torch_dist checkpoint")
    parser.add_argument("--format", choices=("auto", "megarl", "torch_dist"), default="auto", help="input format (default: detect)")
    parser.add_argument("--hf-assets", type=Path, default=None, help="torch_dist: HF directory with config.json and tokenizer")
    parser.add_argument("--out", type=Path, required=True, help="output HF directory (must not exist or be empty)")
    add_common_flags(parser, verify_help="forward a few tokens through megarl and transformers; report max logit diff")
    parser.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_HF_SHARD_BYTES, help="bytes per safetensors file, e.g. 2GB, 5GB (default 4GB)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from megarl.checkpoint.torch_dist import looks_like_torch_dist, torch_dist_to_hf

    if args.format == "torch_dist" or (args.format == "auto" and looks_like_torch_dist(args.megatron_dir)):
        if args.verify:
            raise ValueError("--verify reads megarl Megatron checkpoints; drop it for a torch_dist input")
        report = torch_dist_to_hf(args.megatron_dir, args.out, hf_assets=args.hf_assets, dtype=args.dtype)
        return finish(report, None, args.verify_tol)
    report = megatron_to_hf(args.megatron_dir, args.out, dtype=args.dtype, max_shard_bytes=args.max_shard_size, progress=not args.no_progress)
    verify = None
    if args.verify:
        from megarl.checkpoint.verify import verify_megatron_against_hf

        verify = verify_megatron_against_hf(args.megatron_dir, args.out)
    return finish(report, verify, args.verify_tol)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
