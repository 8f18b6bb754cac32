"""Convert a Hugging Face model directory (safetensors) into a Megatron checkpoint.

--format megarl (default): megarl's own layout at one TP/PP layout (mp_rank_TT_PPP/model.safetensors
plus megarl_checkpoint.json), streamed tensor by tensor (peak memory does not grow with the model)
through megarl's one mapping declaration (megarl/models/mapping.py).
--format torch_dist: Megatron's distributed checkpoint as Megatron-LM's --load and Megatron-Bridge
read it (latest_checkpointed_iteration.txt, iter_NNNNNNN/ with megatron-core GPT tensor names,
hf/ with config and tokenizer); loadable at any TP/PP whose padded vocab matches (--tp: pad the
vocab as Megatron does at that TP size). Holds the model in memory once.
The output directory is written under a temporary name and renamed when complete.

Examples:
    python tools/convert_hf_to_megatron.py --hf-dir ~/models/Qwen2.5-1.5B --out ckpt/qwen1.5b_tp2pp1 --tp 2 --dtype bf16 --verify
    python tools/convert_hf_to_megatron.py --hf-dir ~/models/Qwen2.5-1.5B --out ckpt/qwen1.5b_mcore --format torch_dist
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
    parser.add_argument("--format", choices=("megarl", "torch_dist"), default="megarl",
                        help="megarl: megarl's streamed layout (default); torch_dist: Megatron-LM / Megatron-Bridge layout")
    parser.add_argument("--iteration", type=int, default=0, help="torch_dist: the iteration the tracker names (iter_NNNNNNN)")
    add_common_flags(parser, verify_help="forward a few tokens through megarl and transformers; report max logit diff")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.format == "torch_dist":
        from megarl.checkpoint.torch_dist import hf_to_torch_dist

        if args.pp != 1 or args.verify:
            raise ValueError("--format torch_dist has no --pp (any PP layout loads it) and no --verify; drop them")
        report = hf_to_torch_dist(args.hf_dir, args.out, dtype=args.dtype, iteration=args.iteration, vocab_tp=args.tp)
        return finish(report, None, args.verify_tol)
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
