"""Convert a Hugging Face model directory (safetensors) into a megarl Megatron checkpoint at a TP/PP layout.

Streams tensor by tensor (peak memory does not grow with the model) through megarl's one mapping
declaration (megarl/models/mapping.py). The output directory is written under a temporary name
and renamed when complete.

Example:
    python tools/convert_hf_to_megatron.py --hf-dir ~/models/Qwen2.5-1.5B --out ckpt/qwen1.5b_tp2pp1 --tp 2 --dtype bf16 --verify
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarl.checkpoint.convert import hf_to_megatron
from megarl.checkpoint.tool_cli import add_common_flags, finish, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", type=Path, required=True, help="HF model directory (config.json + safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist or be empty)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (divides heads and KV heads)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (divides the layers)")
    add_common_flags(parser, verify_help="forward a few tokens through megarl and transformers; report max logit diff")
    return parser


def _run(args: argparse.Namespace) -> int:
    report = hf_to_megatron(args.hf_dir, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, progress=not args.no_progress)
    verify = None
    if args.verify:
        from megarl.checkpoint.verify import verify_megatron_against_hf

        verify = verify_megatron_against_hf(args.out, args.hf_dir)
    return finish(report, verify, args.verify_tol)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
