"""Convert a megarl Megatron checkpoint (any TP/PP layout) into a standard Hugging Face model directory.

Writes sharded `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`, config.json
(dtype set to the output dtype) and the tokenizer files kept in the checkpoint's hf/ folder;
transformers' AutoModelForCausalLM.from_pretrained and SGLang load the result. Vocab padding is
removed, fused qkv / gate-up tensors are split, the tied output layer is not duplicated.

Example:
    python tools/convert_megatron_to_hf.py --megatron-dir ckpt/step_500 --out hf/qwen1.5b_step500 --max-shard-size 4GB --verify
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarl.checkpoint.convert import DEFAULT_HF_SHARD_BYTES, megatron_to_hf
from megarl.checkpoint.tool_cli import parse_size, add_common_flags, finish, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-dir", type=Path, required=True, help="megarl Megatron checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="output HF directory (must not exist or be empty)")
    add_common_flags(parser, verify_help="forward a few tokens through megarl and transformers; report max logit diff")
    parser.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_HF_SHARD_BYTES, help="bytes per safetensors file, e.g. 2GB, 5GB (default 4GB)")
    return parser


def _run(args: argparse.Namespace) -> int:
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
