"""Convert a Megatron torch_dist checkpoint into a Hugging Face model directory.

Reads what megarl writes (tools/convert_hf_to_megatron.py, a training run's resume checkpoint
CHECKPOINTS/step_N: its actor) and what Megatron-LM and Megatron-Bridge write (a root with
latest_checkpointed_iteration.txt or an iter_NNNNNNN/ directory), saved at any TP/PP layout.
The HF config and tokenizer come from the checkpoint's hf/ directory, or --hf-assets (the HF
model it was made from). Streamed one tensor at a time into sharded safetensors with
model.safetensors.index.json; the output directory appears only when complete.

Examples:
    python tools/convert_megatron_to_hf.py --megatron-dir ckpt/step_500 --out hf/qwen1.5b_step500 --max-shard-size 4GB --verify
    python tools/convert_megatron_to_hf.py --megatron-dir mlm_ckpt/ --hf-assets ~/models/Qwen2.5-7B --out hf/qwen7b_mlm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarl.checkpoint.convert import DEFAULT_HF_SHARD_BYTES, torch_dist_to_hf
from megarl.checkpoint.tool_cli import add_common_flags, finish, parse_size, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-dir", type=Path, required=True, help="torch_dist checkpoint (root, iter dir or resume checkpoint)")
    parser.add_argument("--hf-assets", type=Path, default=None, help="HF directory with config.json and tokenizer (when hf/ is absent)")
    parser.add_argument("--out", type=Path, required=True, help="output HF directory (must not exist or be empty)")
    add_common_flags(parser, verify_help="forward a few tokens through megarl and transformers; report max logit diff")
    parser.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_HF_SHARD_BYTES, help="bytes per safetensors file, e.g. 2GB, 5GB (default 4GB)")
    return parser


def _run(args: argparse.Namespace) -> int:
    report = torch_dist_to_hf(args.megatron_dir, args.out, hf_assets=args.hf_assets, dtype=args.dtype,
                              max_shard_bytes=args.max_shard_size, progress=not args.no_progress)
    verify = None
    if args.verify:
        from megarl.checkpoint.verify import verify_torch_dist_against_hf

        verify = verify_torch_dist_against_hf(args.megatron_dir, args.out, hf_assets=args.hf_assets)
    return finish(report, verify, args.verify_tol)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
