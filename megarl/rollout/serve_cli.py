"""`megarl serve`: start the built-in rollout server (SGLang protocol subset) on a Hugging Face model.

Example:
    export MEGARL_SERVE_TOKEN="$(openssl rand -hex 16)"   # or: --token-file FILE (mode 0600)
    megarl serve --model builtin:toy-arith --port 30000   # or an HF model directory

The admin token (weight updates, pause, flush, ...) comes from $MEGARL_SERVE_TOKEN or --token-file,
never the command line, where every local user could read it. Without a token those endpoints are
disabled, and the server refuses to bind anything but loopback.

Prints `megarl serve: listening on http://HOST:PORT` once it accepts requests (with --port 0 the
line carries the port the system chose), then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from megarl.rollout.admin_token import TOKEN_ENV, read_token_file
from megarl.rollout.protocol import MAX_BATCH_SEQUENCES


def admin_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The token from --token-file or $MEGARL_SERVE_TOKEN; --token is refused (argv is public)."""
    if args.token is not None:
        parser.error(f"--token would show the admin token to every local user (ps); put it in ${TOKEN_ENV} "
                     "or in a mode-0600 file passed as --token-file FILE")
    if args.token_file:
        try:
            return read_token_file(args.token_file)
        except ValueError as err:
            parser.error(str(err))
    return os.environ.get(TOKEN_ENV) or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megarl serve", description=__doc__.split("\n\n")[0],
        epilog="examples:\n  megarl serve --model builtin:toy-arith --port 0   (0: a free port, printed once listening)\n"
               "  megarl serve --model runs/tiny_cpu/hf/step_000030 --port 0   (after `megarl train configs/tiny_cpu.yaml "
               "checkpoint.hf_export_every=10`)\n\nAdmin endpoints (weight updates) need a token: export MEGARL_SERVE_TOKEN=...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face model directory (config, weights, tokenizer), "
                        "or builtin:NAME (the demo's toy model, pretrained on first use)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=30000, help="port to bind; 0 picks a free one (default 30000)")
    parser.add_argument("--token-file", default=None,
                        help=f"file (mode 0600) holding the admin token; default: ${TOKEN_ENV}. Admin endpoints need "
                             "'Authorization: Bearer TOKEN' and are disabled without a token")
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused with a pointer to the safe ways
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32)")
    parser.add_argument("--max-batch-sequences", type=int, default=MAX_BATCH_SEQUENCES,
                        help=f"most sequences generated together in one batch (default {MAX_BATCH_SEQUENCES}: rollout.max_batch_sequences)")
    parser.add_argument("--weight-version", default="default", help="initial weight_version (default 'default')")
    parser.add_argument("--seed", type=int, default=0, help="seed for requests without sampling_seed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = admin_token(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    from megarl.rollout.engine import GenerationEngine
    from megarl.rollout.server import check_bind, serve

    try:
        check_bind(args.host, token)
    except ValueError as err:
        parser.error(str(err))

    if args.threads:
        torch.set_num_threads(args.threads)
    from megarl import model_source

    try:
        model = str(model_source.resolve(args.model).hf_dir)
    except ValueError as err:
        parser.error(str(err))
    engine = GenerationEngine(model, dtype=getattr(torch, args.dtype), seed=args.seed,
                              weight_version=args.weight_version)

    def ready(port: int) -> None:
        print(f"megarl serve: listening on http://{args.host}:{port}", flush=True)

    async def run() -> None:
        task = asyncio.create_task(serve(engine, host=args.host, port=args.port, token=token,
                                         max_batch_sequences=args.max_batch_sequences, ready=ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
