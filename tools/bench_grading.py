"""Benchmark megarl's math grader: answers/s on MATH500-sized batches and worst-case adversarial seconds.

Three workloads, each graded with `megarl.rewards.grade_batch` (fast in-process path plus the
hard-limited worker pool):
  self-check   every MATH500 gold boxed in a response, against itself (all should be correct)
  perturbed    every MATH500 gold against a wrong answer (gold + 1 for numbers, another
               problem's gold otherwise; all should be wrong), which sends more to sympy
  adversarial  power towers, 1 MB answers, deep nesting: worst seconds must stay below the limit
Prints a rich table and writes JSON (--json-out).

example:
  python tools/bench_grading.py --workers 2 --timeout 5 --json-out bench_grading.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

ADVERSARIAL = [
    ("power tower", "10^{10^{10^{10}}}", "5"),
    ("power tower 2", "9^{9^{9^{9}}}", "7"),
    ("huge power", "10^{10^{8}}", "5"),
    ("huge integer power", "123456789^{123456789}", "7"),
    ("1 MB digits", "1" * 1_000_000, "5"),
    ("deep braces", "{" * 20_000 + "1" + "}" * 20_000, "1"),
    ("deep fractions", "\\frac{" * 5_000 + "1" + "}{2}" * 5_000, "1"),
    ("nested integral", "\\int_0^\\infty e^{-x^{x^{x}}}\\,dx", "0"),
    ("factorial tower", "((10!)!)!", "3"),
    ("garbage braces", "\\}\\}\\}{{{", "3"),
]


def boxed(answer: str) -> str:
    return f"Step by step.\nThe final answer is $\\boxed{{{answer}}}$."


def perturb(gold: str, other: str) -> str:
    from megarl.rewards.normalization import normalize_answer, parse_number

    value = parse_number(normalize_answer(gold))
    if value is not None and float(value).is_integer():
        return str(int(value) + 1)
    return other


def run_workload(name, responses, golds, pool, timeout, expect):
    from megarl.rewards import grade_batch
    from megarl.rewards.equivalence import _quick_equal_cached

    _quick_equal_cached.cache_clear()  # measure cold, as a fresh rollout would be
    started = time.perf_counter()
    results = grade_batch(responses, golds, timeout=timeout, pool=pool)
    elapsed = time.perf_counter() - started
    methods: dict[str, int] = {}
    for result in results:
        methods[result.method] = methods.get(result.method, 0) + 1
    return {
        "workload": name,
        "answers": len(results),
        "seconds": elapsed,
        "answers_per_s": len(results) / elapsed,
        "as_expected": sum(1 for r in results if r.correct == expect),
        "worst_seconds": max(r.seconds for r in results),
        "timeouts": sum(1 for r in results if r.timed_out),
        "methods": methods,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="example:" + __doc__.split("example:")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="grading worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=5.0, help="hard per-answer limit in seconds (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each MATH500 workload; the best is kept")
    parser.add_argument("--json-out", default="bench_grading.json")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        from megarl.data import load_records

        print(f"bench_grading (dry run): {len(load_records('math500'))} MATH500 answers x 2 workloads, {args.repeats} repeat(s), "
              f"{len(ADVERSARIAL)} adversarial answers; {args.workers} worker(s), {args.timeout} s limit; results to {args.json_out}")
        return 0

    from rich.console import Console
    from rich.table import Table

    from megarl.data import load_records
    from megarl.rewards import GradingPool

    console = Console(width=150)
    records = load_records("math500")
    golds = [r.answer for r in records]
    self_check = [boxed(g) for g in golds]
    wrong = [boxed(perturb(g, golds[(i + 37) % len(golds)])) for i, g in enumerate(golds)]
    rows = []
    with GradingPool(num_workers=args.workers, timeout=args.timeout) as pool:
        pool.compare([("1", ["1"])])  # wait until the workers are up: startup is not grading time
        with console.status("grading...") as status:
            for name, responses, expect in (("self-check (gold vs gold)", self_check, True),
                                            ("perturbed (gold vs wrong)", wrong, False)):
                runs = []
                for repeat in range(args.repeats):
                    status.update(f"{name}: repeat {repeat + 1}/{args.repeats}")
                    runs.append(run_workload(name, responses, golds, pool, args.timeout, expect))
                rows.append(max(runs, key=lambda run: run["answers_per_s"]))
            status.update("adversarial")
            adversarial = run_workload("adversarial", [boxed(a) for _, a, _ in ADVERSARIAL], [g for _, _, g in ADVERSARIAL],
                                       pool, args.timeout, False)
            rows.append(adversarial)
        killed = pool.stats.killed_workers

    table = Table(title=f"megarl grading benchmark ({os.cpu_count()} cores, {args.workers} workers, limit {args.timeout:g} s)")
    for column in ("workload", "answers", "answers/s", "as expected", "worst answer s", "timeouts", "decided by"):
        table.add_column(column, justify="right" if column not in ("workload", "decided by") else "left")
    for row in rows:
        table.add_row(row["workload"], str(row["answers"]), f"{row['answers_per_s']:.0f}", f"{row['as_expected']}/{row['answers']}",
                      f"{row['worst_seconds']:.3f}", str(row["timeouts"]), ", ".join(f"{k} {v}" for k, v in sorted(row["methods"].items())))
    console.print(table)
    console.print(f"workers killed at the hard limit: {killed}")
    report = {"machine": {"platform": platform.platform(), "processor": platform.machine(), "cores": os.cpu_count()},
              "workers": args.workers, "timeout_s": args.timeout, "results": rows, "killed_workers": killed}
    temp_path = args.json_out + ".tmp"
    with open(temp_path, "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(temp_path, args.json_out)
    console.print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
