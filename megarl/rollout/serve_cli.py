"""`megarl serve`: start the built-in rollout server (SGLang protocol subset) on a Hugging Face model.

Example:
    megarl serve --model /path/to/hf_model --port 30000 --token "$(openssl rand -hex 16)"

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megarl serve", description=__doc__.split("\n\n")[0],
        epilog="example: megarl serve --model runs/tiny_hf --port 30000 --token secret",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face model directory (config, weights, tokenizer)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=30000, help="port to bind; 0 picks a free one (default 30000)")
    parser.add_argument("--token", default=os.environ.get("MEGARL_SERVE_TOKEN"),
                        help="admin token: weight updates need 'Authorization: Bearer TOKEN'; "
                             "/update_weights_from_tensor is disabled without one (default: $MEGARL_SERVE_TOKEN)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32)")
    parser.add_argument("--max-batch-sequences", type=int, default=256,
                        help="most sequences generated together in one batch (default 256)")
    parser.add_argument("--weight-version", default="default", help="initial weight_version (default 'default')")
    parser.add_argument("--seed", type=int, default=0, help="seed for requests without sampling_seed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    from megarl.rollout.engine import GenerationEngine
    from megarl.rollout.server import serve

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = GenerationEngine(args.model, dtype=getattr(torch, args.dtype), seed=args.seed,
                              weight_version=args.weight_version)

    def ready(port: int) -> None:
        print(f"megarl serve: listening on http://{args.host}:{port}", flush=True)

    async def run() -> None:
        task = asyncio.create_task(serve(engine, host=args.host, port=args.port, token=args.token,
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
