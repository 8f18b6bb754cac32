"""`megarl data`: list shipped sets, select by difficulty, check train/eval overlap, filter by pass rate.

`megarl data filter` samples k answers per prompt from a model through the rollout engine
(megarl's built-in servers for a model directory, or a running SGLang/megarl server URL),
grades them, and keeps the prompts whose pass rate lies in a range.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  megarl data list
  megarl data select hard --out train.jsonl                 # SimpleRL-Zoo preset (easy|medium|hard)
  megarl data select math_lvl1to4_train --levels 3-4 --out lvl34.jsonl
  megarl data overlap my_train.jsonl --drop-out my_train_clean.jsonl
"""


def _levels(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--levels {text!r}: write a range like 3-5 or a single level like 1") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarl data", description=__doc__.splitlines()[0], epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="shipped data sets with row counts and checksum status, and the demo's generated sets")
    select = commands.add_parser("select", help="write prompts of a preset (easy/medium/hard) or a source, by MATH level")
    select.add_argument("source", help="preset name (easy, medium, hard), shipped set, file or folder")
    select.add_argument("--levels", type=_levels, help="keep MATH levels in this range, e.g. 3-5")
    select.add_argument("--out", required=True, help="output JSON Lines file")
    select.add_argument("--allow-eval-overlap", action="store_true", help="do not refuse prompts found in evaluation sets")
    overlap = commands.add_parser("overlap", help="find training prompts that appear in the shipped evaluation sets")
    overlap.add_argument("source", help="training data: shipped set, file or folder")
    overlap.add_argument("--drop-out", help="write the training data without the overlapping prompts here")
    filt = commands.add_parser("filter", help="keep prompts whose measured pass rate lies in a range (samples through the rollout engine)")
    filt.add_argument("source", help="prompts: shipped set, preset (easy/medium/hard), file or folder")
    filt.add_argument("--model", required=True, help="HF model directory (megarl starts rollout servers) or a server URL")
    filt.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory; required with a URL)")
    filt.add_argument("--template", default="qwen-boxed")
    filt.add_argument("--k", type=int, default=8, help="samples per prompt")
    filt.add_argument("--min", dest="min_rate", type=float, default=0.0, help="lowest pass rate kept")
    filt.add_argument("--max", dest="max_rate", type=float, default=1.0, help="highest pass rate kept")
    filt.add_argument("--temperature", type=float, default=1.0)
    filt.add_argument("--max-new-tokens", type=int, default=1024)
    filt.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    filt.add_argument("--servers", type=int, default=1, help="built-in servers to start for a model directory")
    filt.add_argument("--out", required=True, help="JSONL of the kept prompts")
    filt.add_argument("--rates-out", default=None, help="JSONL of every prompt's pass rate (default: OUT with .pass_rates.jsonl)")
    return parser


def _load(source: str):
    from megarl.data import load_prompts
    from megarl.data.difficulty import DIFFICULTY_PRESETS, load_difficulty_preset

    return load_difficulty_preset(source) if source in DIFFICULTY_PRESETS else load_prompts(source)


def _add_generated_rows(table) -> None:
    """The generated sets plugins registered (the CPU demo's): NAME:SPLIT[:COUNT], made on use, no file."""
    from megarl.data.sources import GENERATED_SETS

    for name, generated in GENERATED_SETS.items():
        for split, use in generated.splits.items():
            table.add_row(f"{name}:{split}[:COUNT]", f"{use}, generated", f"COUNT (default {generated.default_rows})", "-")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"megarl data {args.command}: {error}", file=sys.stderr)
        return 2


def _filter(args: argparse.Namespace) -> int:
    """Sample k responses per prompt through rollout servers, grade, keep a pass-rate band."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from megarl.data.pass_rate import filter_by_pass_rate, measure_pass_rates, record_to_row, write_jsonl_atomic, write_pass_rates
    from megarl.data.templates import stop_strings
    from megarl.rollout.client import RolloutClient, SamplingParams

    records = _load(args.source)
    if args.limit:
        records = records[: args.limit]
    group = None
    if args.model.startswith(("http://", "https://")):
        if not args.tokenizer:
            raise ValueError("--tokenizer DIR is required when --model is a server URL")
        urls = [args.model]
    else:
        from megarl.rollout.fleet import start_servers

        group = start_servers("builtin", args.model, args.servers, Path(args.out).parent / "filter_logs")
        urls = group.generation_urls
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        client = RolloutClient(urls)
        client.wait_until_healthy()
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  stop=stop_strings(args.template, tokenizer), sampling_seed=0)

        def sample_fn(prompts: list[str], k: int):
            ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            return [[(s.text, s.finish_reason) for s in group] for group in client.generate(ids, sampling, n=k)]

        rates = measure_pass_rates(records, sample_fn, args.k, template=args.template, tokenizer=tokenizer)
    finally:
        if group is not None:
            group.stop()
    kept = filter_by_pass_rate(records, rates, args.min_rate, args.max_rate)
    rates_out = args.rates_out or str(Path(args.out).with_suffix("")) + ".pass_rates.jsonl"
    write_pass_rates(rates_out, rates)
    write_jsonl_atomic(args.out, [record_to_row(r) for r in kept])
    mean = sum(r.pass_rate for r in rates) / len(rates) if rates else 0.0
    print(f"kept {len(kept)} of {len(records)} prompts with pass rate in [{args.min_rate}, {args.max_rate}] "
          f"(mean pass rate {mean:.3f}); wrote {args.out} and {rates_out}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "filter":
        return _filter(args)
    if args.command == "list":
        from rich.console import Console
        from rich.table import Table

        from megarl.datasets import EVAL_SETS, dataset_path, list_datasets, verify_checksums

        checks = verify_checksums()
        table = Table(title="megarl data sets: shipped files (megarl/datasets/README.md has sources and licenses) and the demo's generated sets")
        for column in ("name", "use", "rows", "md5"):
            table.add_column(column)
        for name in list_datasets():
            rows = sum(1 for line in dataset_path(name).open(encoding="utf-8") if line.strip())
            ok = checks.get(f"{name}.jsonl")
            table.add_row(name, "eval" if name in EVAL_SETS else "train", str(rows), "ok" if ok else "MISMATCH")
        _add_generated_rows(table)
        Console().print(table)
        return 0 if all(checks.values()) else 1
    if args.command == "select":
        from megarl.data.difficulty import select_by_level
        from megarl.data.overlap import check_no_overlap
        from megarl.data.pass_rate import record_to_row, write_jsonl_atomic

        records = _load(args.source)
        if args.levels:
            records = select_by_level(records, *args.levels)
        if not args.allow_eval_overlap:
            check_no_overlap(records)
        write_jsonl_atomic(args.out, [record_to_row(r) for r in records])
        print(f"wrote {len(records)} prompts to {args.out}", file=sys.stderr)
        return 0
    if args.command == "overlap":
        from megarl.data.overlap import drop_overlapping, find_overlap
        from megarl.data.pass_rate import record_to_row, write_jsonl_atomic

        records = _load(args.source)
        found = find_overlap(records)
        for item in found[:20]:
            print(f"{item.train_id}\t{item.eval_set}\t{item.eval_id}")
        print(f"{len(found)} of {len(records)} training prompts appear in evaluation sets", file=sys.stderr)
        if args.drop_out:
            kept = drop_overlapping(records)
            write_jsonl_atomic(args.drop_out, [record_to_row(r) for r in kept])
            print(f"wrote {len(kept)} prompts to {args.drop_out}", file=sys.stderr)
            return 0
        return 1 if found else 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
