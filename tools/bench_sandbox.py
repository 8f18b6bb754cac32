"""Benchmark the tool sandbox: what one call costs with a pool of warm sandboxes and without one.

Rows (each timed on the host, from the call to its result; median and 90th percentile over --calls;
the first three rows are interleaved call by call, so load from other work hits them alike):
- `python -I` alone: a bare interpreter subprocess running the program, no sandbox (the floor);
- no pool: `run_sandboxed`, which starts a bubblewrap sandbox and its worker for the one call;
- pool, 1 worker, sequential calls: the sandbox is already up; each call forks a fresh child inside;
- pool, N workers, N concurrent callers: per-call latency under load, and calls per second.
The "inside" column is the program's own wall time as the worker measured it (child start to exit),
so host latency minus inside is the sandbox's per-call overhead.

Example:
    python tools/bench_sandbox.py --calls 20 --workers 2
    python tools/bench_sandbox.py --program "import numpy; print(numpy.zeros(3).sum())" --calls 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from megarl.sandbox import SandboxLimits, SandboxPool, run_sandboxed


def _summary(name: str, host: list[float], inside: list[float] | None, wall: float) -> dict:
    host_ms = sorted(x * 1000 for x in host)
    return {"path": name, "host_ms_median": statistics.median(host_ms),
            "host_ms_p90": host_ms[min(len(host_ms) - 1, int(0.9 * len(host_ms)))],
            "inside_ms_median": statistics.median(inside) * 1000 if inside else None, "calls_per_s": len(host) / wall}


def _markdown(row: dict) -> str:
    inside = f"{row['inside_ms_median']:.0f}" if row["inside_ms_median"] is not None else "-"
    return f"| {row['path']} | {row['host_ms_median']:.0f} | {row['host_ms_p90']:.0f} | {inside} | {row['calls_per_s']:.1f} |"


def _timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: python tools/bench_sandbox.py --calls 20 --workers 2")
    parser.add_argument("--calls", type=int, default=20, help="calls per row (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="workers (and callers) of the concurrent row")
    parser.add_argument("--program", default="print(sum(range(1000)))", help="the Python program every call runs")
    parser.add_argument("--json", default="bench_sandbox.json", help="where to write the rows (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print what would run; run nothing")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.workers < 1:
        parser.error("--calls and --workers must be at least 1")
    if args.dry_run:
        print(f"bench_sandbox (dry run): 4 rows of {args.calls} calls ({args.workers} workers in the concurrent row) "
              f"running {args.program!r}; results to {args.json}")
        return 0
    limits = SandboxLimits(timeout_s=30)
    rows = []

    # The three sequential paths are interleaved call by call, so load from other work hits them alike.
    bare, fresh, fresh_inside, warm, warm_inside = [], [], [], [], []
    with SandboxPool(workers=1, limits=limits) as pool:
        pool.run(args.program)  # warm the page cache the same way for every path
        for _ in range(args.calls):
            bare.append(_timed(lambda: subprocess.run([sys.executable, "-I", "-c", args.program],
                                                      capture_output=True, check=True)))
            t0 = time.monotonic()
            result = run_sandboxed(args.program, limits)
            fresh.append(time.monotonic() - t0)
            fresh_inside.append(result.seconds)
            assert result.status == "ok", result
            t0 = time.monotonic()
            result = pool.run(args.program)
            warm.append(time.monotonic() - t0)
            warm_inside.append(result.seconds)
            assert result.status == "ok", result
    rows.append(_summary("`python -I` subprocess, no sandbox", bare, None, sum(bare)))
    rows.append(_summary("no pool: a fresh sandbox per call (`run_sandboxed`)", fresh, fresh_inside, sum(fresh)))
    rows.append(_summary("pool, 1 warm worker, sequential", warm, warm_inside, sum(warm)))

    with SandboxPool(workers=args.workers, limits=limits) as pool:
        def one(_):
            t0 = time.monotonic()
            result = pool.run(args.program)
            return time.monotonic() - t0, result.seconds

        with ThreadPoolExecutor(args.workers) as callers:
            start = time.monotonic()
            timed = list(callers.map(one, range(args.calls)))
            wall = time.monotonic() - start
        rows.append(_summary(f"pool, {args.workers} workers, {args.workers} concurrent callers",
                             [t for t, _ in timed], [s for _, s in timed], wall))
    print(f"program: {args.program!r}, {args.calls} calls per row")
    print("| path | host ms per call (median) | p90 | inside ms (median) | calls/s |\n|---|---|---|---|---|")
    print("\n".join(_markdown(row) for row in rows))
    with open(args.json, "w") as out:
        json.dump({"program": args.program, "calls": args.calls, "workers": args.workers, "rows": rows}, out, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
