"""Convert a Hugging Face model directory (safetensors) into a Megatron torch_dist checkpoint.

The output is Megatron's distributed checkpoint as megatron-core, Megatron-LM's --load and
Megatron-Bridge read it, and what megarl trains from (model.path) and resumes: a root with
latest_checkpointed_iteration.txt, iter_NNNNNNN/ (torch_dist files, megatron-core GPT tensor
names) and hf/ (config and tokenizer). It loads at any TP/PP layout whose padded vocab matches
(--tp: pad the vocab as Megatron does at that TP size, a multiple of 128 x TP). Streamed one
tensor at a time through megarl's per-architecture mapping (megarl/models/mapping.py): peak memory
is about two of the largest tensor, whatever the model size. The output directory is written
under a temporary name and renamed when complete.

Examples:
    python tools/convert_hf_to_megatron.py --hf-dir ~/models/Qwen2.5-1.5B --out ckpt/qwen1.5b_tp2 --tp 2 --dtype bf16 --verify
    python tools/convert_hf_to_megatron.py --hf-dir ~/models/Qwen2.5-1.5B --out ckpt/qwen1.5b_mcore --iteration 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarl.checkpoint.convert import hf_to_torch_dist
from megarl.checkpoint.tool_cli import add_common_flags, finish, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", type=Path, required=True, help="HF model directory (config.json + safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist or be empty)")
    parser.add_argument("--tp", type=int, default=1,
                        help="pad the vocab as Megatron does at this tensor-parallel size (any TP/PP with the same padded vocab loads it)")
    parser.add_argument("--iteration", type=int, default=0, help="the iteration the tracker names (iter_NNNNNNN)")
    add_common_flags(parser, verify_help="forward a few tokens through megarl and transformers; report max logit diff")
    return parser


def _run(args: argparse.Namespace) -> int:
    report = hf_to_torch_dist(args.hf_dir, args.out, dtype=args.dtype, iteration=args.iteration, vocab_tp=args.tp,
                              progress=not args.no_progress)
    verify = None
    if args.verify:
        from megarl.checkpoint.verify import verify_torch_dist_against_hf

        verify = verify_torch_dist_against_hf(args.out, args.hf_dir)
    return finish(report, verify, args.verify_tol)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
