"""`megarl eval`: evaluate a model (HF directory, built-in model or running server URL) on math benchmarks.

examples:
  megarl eval --model builtin:toy-arith --benchmarks toy-arith:heldout:200 --template none --max-new-tokens 48
  megarl eval --model builtin:toy-arith --benchmarks math500,gsm8k_test --template qwen-boxed --limit 50 --dry-run
  megarl eval --model runs/tiny_cpu/hf/step_000030 --benchmarks toy-arith:heldout:200 --template none --max-new-tokens 48
      (the demo's final weights, after `megarl train configs/tiny_cpu.yaml checkpoint.hf_export_every=10`)
  megarl eval --model MODEL_DIR --template qwen-boxed --protocol simplerl-zoo --extraction qwen-math
      (an HF model directory of yours, SimpleRL-Zoo's sampling and answer extraction)

--dry-run checks the model and the benchmarks and prints what would run, without starting servers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from megarl import model_source
from megarl.config import ConfigError, DataConfig, EvalConfig, RewardConfig, RolloutConfig, build_section
from megarl.evaluation.protocols import PROTOCOL_NAMES
from megarl.rewards.extraction import EXTRACTION_MODES
from megarl.rollout.engines import ENGINE_NAMES, default_engine

# flag -> field of the recipe's `eval` and `reward` sections; a flag left out keeps the section's
# default (megarl.config), so `megarl eval` samples and grades as a recipe that does not set it.
EVAL_FLAGS = {"n": "n", "temperature": "temperature", "top_p": "top_p", "max_new_tokens": "max_new_tokens",
              "protocol": "protocol", "limit": "limit", "stop_token_ids": "stop_token_ids"}
REWARD_FLAGS = {"extraction": "extraction"}


def _default(section, field: str):
    return section.model_fields[field].default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarl eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory or builtin:NAME (megarl starts rollout servers), "
                        "or http://host:port of a server")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory; required with a URL)")
    parser.add_argument("--benchmarks", default="aime24,amc23,math500,minerva_math,olympiadbench,gsm8k_test",
                        help="comma-separated shipped set names or JSONL paths")
    parser.add_argument("--template", default=_default(DataConfig, "template"), help="prompt template (default %(default)s)")
    parser.add_argument("--n", type=int, default=argparse.SUPPRESS,
                        help=f"samples per problem (avg@n and pass@n; default {_default(EvalConfig, 'n')})")
    parser.add_argument("--temperature", type=float, default=argparse.SUPPRESS, help=f"default {_default(EvalConfig, 'temperature')}")
    parser.add_argument("--top-p", type=float, default=argparse.SUPPRESS, help=f"default {_default(EvalConfig, 'top_p')}")
    parser.add_argument("--max-new-tokens", type=int, default=argparse.SUPPRESS, help=f"default {_default(EvalConfig, 'max_new_tokens')}")
    parser.add_argument("--protocol", default=argparse.SUPPRESS, choices=PROTOCOL_NAMES,
                        help="a paper's sampling (simplerl-zoo: T=1, top-p 0.95, 16000 tokens, avg@32 on aime24; greedy: Dr. GRPO's), "
                             f"or custom: --n/--temperature/--top-p/--max-new-tokens (default {_default(EvalConfig, 'protocol')})")
    parser.add_argument("--extraction", default=argparse.SUPPRESS, choices=EXTRACTION_MODES,
                        help=f"answer extraction (default {_default(RewardConfig, 'extraction')})")
    parser.add_argument("--limit", type=int, default=argparse.SUPPRESS, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--stop-token-ids", type=_id_list, default=argparse.SUPPRESS,
                        help="comma-separated token ids that end a response (a recipe's eval.stop_token_ids, e.g. 151645,151643 for Qwen)")
    parser.add_argument("--no-template-stops", dest="template_stops", action="store_false",
                        default=_default(RolloutConfig, "template_stops"),
                        help="stop only at EOS and --stop-token-ids, not at the template's stop strings (Dr. GRPO's qwen_math run)")
    parser.add_argument("--baseline", action="store_true",
                        help="the model is a base model (step 0): under simplerl-zoo its one-run scores are greedy, as the paper's baselines")
    parser.add_argument("--servers", type=int, default=1, help="built-in servers to start for a model directory")
    parser.add_argument("--engine", choices=ENGINE_NAMES, default=None,
                        help=f"default: {default_engine(True).name} on GPUs, {default_engine(False).name} on CPU")
    parser.add_argument("--out", default=None, help="directory for samples.jsonl and summary.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="check the model and benchmarks, print the plan, start nothing")
    return parser


def model_directory(model: str, build: bool = True) -> Path:
    """The HF directory `--model` names (megarl.model_source): a path, or a registered scheme's model
    (`builtin:toy-arith`, pretrained on first use unless not `build`). Raises ValueError."""
    source = model_source.resolve(model, build=build)
    if not source.has_hf_weights:
        raise ValueError(f"{model} is a torch_dist checkpoint and the rollout servers load HF weights; convert it to HF "
                         "first (tools/convert_megatron_to_hf.py) and pass that directory")
    return source.hf_dir


def print_plan(args: argparse.Namespace, settings) -> int:
    """--dry-run: what `megarl eval` would evaluate, after checking that every benchmark loads."""
    from megarl.data import load_prompts
    from megarl.evaluation.harness import sampling_for

    print(f"megarl eval (dry run): {args.model}, template {settings.template}, extraction {settings.reward.extraction}")
    for name in settings.eval.benchmarks:
        rows = load_prompts(name)
        count = min(len(rows), settings.eval.limit) if settings.eval.limit else len(rows)
        n, temperature, top_p, max_new_tokens, _ = sampling_for(settings.eval, name, settings.template)
        print(f"  {name}: {count} problems x {n} samples, temperature {temperature}, top-p {top_p}, "
              f"up to {max_new_tokens} new tokens")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = eval_settings(args)
    except ConfigError as err:
        print(f"megarl eval: {err}", file=sys.stderr)
        return 2

    from rich.console import Console
    from transformers import AutoTokenizer

    from megarl.evaluation.harness import EvaluationFailed, evaluate_benchmarks, results_table
    from megarl.rollout.client import RolloutClient

    console = Console() if sys.stdout.isatty() else Console(width=160)
    group = None
    if args.model.startswith(("http://", "https://")):
        if not args.tokenizer:
            print("megarl eval: --tokenizer DIR is required when --model is a server URL", file=sys.stderr)
            return 2
        urls = [args.model]
        if args.dry_run:
            return _dry_run(args, settings)
    else:
        try:
            model_dir = model_directory(args.model, build=not args.dry_run)
        except ValueError as err:
            print(f"megarl eval: {err}", file=sys.stderr)
            return 2
        if not (model_dir / "config.json").exists() and not (args.dry_run and model_source.split_scheme(args.model)):
            print(f"megarl eval: {model_dir} is not an HF model directory (no config.json)", file=sys.stderr)
            return 2
        if args.dry_run:
            return _dry_run(args, settings)
        from megarl.runtime.device import on_gpu
        from megarl.rollout import fleet

        engine = args.engine or default_engine(on_gpu()).name
        log_dir = Path(args.out or tempfile.mkdtemp(prefix="megarl_eval_")) / "logs"
        group = fleet.start_servers(engine, model_dir, args.servers, log_dir, seed=args.seed, router=args.servers > 1)
        urls = group.generation_urls
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or model_dir)
        client = RolloutClient(urls, context_length=_context_length(Path(model_dir)))
        client.wait_until_healthy(timeout_s=300)
        results = evaluate_benchmarks(client, tokenizer, settings, out_dir=Path(args.out) if args.out else None)
    except (FileNotFoundError, ValueError, EvaluationFailed) as err:
        print(f"megarl eval: {err}", file=sys.stderr)
        return 2
    finally:
        if group is not None:
            group.stop()
    console.print(results_table(results, title=f"megarl eval: {args.model}"))
    if args.out:
        console.print(f"per-sample results: {Path(args.out) / 'samples.jsonl'}")
    return 0


def _dry_run(args: argparse.Namespace, settings) -> int:
    try:
        return print_plan(args, settings)
    except (FileNotFoundError, ValueError) as err:
        print(f"megarl eval: {err}", file=sys.stderr)
        return 2


def eval_settings(args: argparse.Namespace):
    """The evaluation the flags describe: the `eval` and `reward` sections built from the flags
    given, the sections' defaults for the rest. Raises ConfigError naming the field."""
    from megarl.evaluation.harness import EvalSettings

    given = vars(args)
    ev = build_section(EvalConfig, "eval", {"benchmarks": [b for b in args.benchmarks.split(",") if b],
                                            **{field: given[flag] for flag, field in EVAL_FLAGS.items() if flag in given}})
    reward = build_section(RewardConfig, "reward", {field: given[flag] for flag, field in REWARD_FLAGS.items() if flag in given})
    return EvalSettings(eval=ev, reward=reward, template=args.template, seed=args.seed, stop_token_ids=list(ev.stop_token_ids or []),
                        template_stops=args.template_stops, baseline=args.baseline)


def _id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token ids, e.g. 151645,151643") from None


def _context_length(directory: Path) -> int | None:
    """The context length in `directory`'s config.json (None without one: requests are not capped)."""
    import json

    from megarl.rollout.protocol import context_length_of

    config = directory / "config.json"
    return context_length_of(json.loads(config.read_text())) if config.is_file() else None
