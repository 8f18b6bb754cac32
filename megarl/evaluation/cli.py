"""`megarl eval`: evaluate a model (HF directory or running server URL) on math benchmarks.

example: megarl eval --model runs/tiny_cpu/hf/step_000020 --benchmarks math500,gsm8k --template qwen-boxed --n 1 --temperature 0
         megarl eval --model /models/Qwen2.5-7B --template qwen-boxed --protocol simplerl-zoo --extraction qwen-math
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from megarl.evaluation.protocols import PROTOCOL_NAMES
from megarl.rewards.extraction import EXTRACTION_MODES


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megarl eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory (megarl starts rollout servers) or http://host:port of a server")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory; required with a URL)")
    parser.add_argument("--benchmarks", default="aime24,amc23,math500,minerva_math,olympiadbench,gsm8k_test",
                        help="comma-separated shipped set names or JSONL paths")
    parser.add_argument("--template", default="qwen-boxed")
    parser.add_argument("--n", type=int, default=1, help="samples per problem (avg@n and pass@n)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--protocol", default="custom", choices=PROTOCOL_NAMES,
                        help="a paper's sampling (simplerl-zoo: T=1, top-p 0.95, 16000 tokens, avg@32 on aime24; greedy: Dr. GRPO's), "
                             "or custom: --n/--temperature/--top-p/--max-new-tokens (default %(default)s)")
    parser.add_argument("--extraction", default="boxed", choices=EXTRACTION_MODES, help="answer extraction (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--servers", type=int, default=1, help="built-in servers to start for a model directory")
    parser.add_argument("--engine", choices=["builtin", "sglang"], default=None, help="default: sglang on GPUs, builtin on CPU")
    parser.add_argument("--out", default=None, help="directory for samples.jsonl and summary.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from rich.console import Console
    from transformers import AutoTokenizer

    from megarl.evaluation.harness import EvalSettings, evaluate_benchmarks, results_table
    from megarl.rollout.client import RolloutClient

    console = Console() if sys.stdout.isatty() else Console(width=160)
    group = None
    if args.model.startswith(("http://", "https://")):
        if not args.tokenizer:
            print("megarl eval: --tokenizer DIR is required when --model is a server URL", file=sys.stderr)
            return 2
        urls = [args.model]
    else:
        model_dir = Path(args.model)
        if not (model_dir / "config.json").exists():
            print(f"megarl eval: {model_dir} is not an HF model directory (no config.json)", file=sys.stderr)
            return 2
        from megarl.runtime.device import on_gpu
        from megarl.rollout import fleet

        engine = args.engine or ("sglang" if on_gpu() else "builtin")
        log_dir = Path(args.out or tempfile.mkdtemp(prefix="megarl_eval_")) / "logs"
        if engine == "builtin":
            group = fleet.start_builtin_servers(model_dir, args.servers, log_dir, seed=args.seed)
            urls = group.generation_urls
        else:
            group = fleet.start_sglang_servers(model_dir, args.servers, 1, log_dir, router=args.servers > 1)
            urls = group.generation_urls
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        client = RolloutClient(urls)
        client.wait_until_healthy(timeout_s=300)
        settings = EvalSettings(
            benchmarks=[b for b in args.benchmarks.split(",") if b], template=args.template, n=args.n,
            temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, limit=args.limit, seed=args.seed,
            protocol=args.protocol, extraction=args.extraction,
        )
        results = evaluate_benchmarks(client, tokenizer, settings, out_dir=Path(args.out) if args.out else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"megarl eval: {err}", file=sys.stderr)
        return 2
    finally:
        if group is not None:
            group.stop()
    console.print(results_table(results, title=f"megarl eval: {args.model}"))
    if args.out:
        console.print(f"per-sample results: {Path(args.out) / 'samples.jsonl'}")
    return 0
