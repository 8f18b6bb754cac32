"""Migrate a checkpoint in megarl's retired own Megatron layout (megarl_checkpoint.json plus
mp_rank_TT_PPP/model.safetensors, any TP/PP) to Megatron's torch_dist, megarl's one Megatron
format: the same weights, bitwise, in the layout tools/convert_hf_to_megatron.py writes (loadable
at any TP/PP with the same padded vocab). Streamed one tensor at a time.

Example:
    python tools/convert_megarl_layout_to_torch_dist.py --in old_ckpt/qwen1.5b_tp2pp1 --out ckpt/qwen1.5b_migrated
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarl.checkpoint.legacy import megarl_layout_to_torch_dist
from megarl.checkpoint.tool_cli import finish, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in", dest="src", type=Path, required=True, help="checkpoint directory in megarl's old layout")
    parser.add_argument("--out", type=Path, required=True, help="output torch_dist root (must not exist or be empty)")
    parser.add_argument("--iteration", type=int, default=0, help="the iteration the tracker names (iter_NNNNNNN)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    return finish(megarl_layout_to_torch_dist(args.src, args.out, iteration=args.iteration, progress=not args.no_progress), None, 0.0)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
