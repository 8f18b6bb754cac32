"""Change the TP/PP layout of a megarl Megatron checkpoint without going through an HF directory.

Each parameter is gathered from the source TP shards of its stage and re-split for the new layout
through megarl's mapping, one parameter at a time (peak memory: one full parameter plus shards).
Vocab padding is recomputed for the new TP size.

Example:
    python tools/reshard.py --in ckpt/step_500 --out ckpt/step_500_tp4pp2 --tp 4 --pp 2 --verify
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarl.checkpoint.convert import reshard
from megarl.checkpoint.tool_cli import add_common_flags, finish, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in", dest="in_dir", type=Path, required=True, help="source megarl Megatron checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist or be empty)")
    parser.add_argument("--tp", type=int, required=True, help="new tensor-parallel size")
    parser.add_argument("--pp", type=int, required=True, help="new pipeline-parallel size")
    add_common_flags(parser, verify_help="compare megarl's logits from the source and the result")
    return parser


def _run(args: argparse.Namespace) -> int:
    report = reshard(args.in_dir, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, progress=not args.no_progress)
    verify = None
    if args.verify:
        from megarl.checkpoint.verify import verify_megatron_pair

        verify = verify_megatron_pair(args.in_dir, args.out)
    return finish(report, verify, args.verify_tol)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
