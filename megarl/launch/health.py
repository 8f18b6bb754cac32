"""Wait for rollout servers to answer /health before a Slurm job starts its trainer.

    python -m megarl.launch.health --timeout 1800 --watch-pid $ROLLOUT_SRUN_PID URL [URL ...]

Exits 0 when every server is healthy, or at the deadline when at least one is (the others are
reported; the trainer's client fails over). Exits 1 when none is healthy by the deadline or when
the watched process (the rollout step's srun) has ended and no server answers. The polling is
`megarl.rollout.fleet.wait_for_servers`; this module is its command line.
"""

from __future__ import annotations

import argparse
import sys
import time

from megarl.rollout.fleet import wait_for_servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megarl.launch.health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait (default 1800)")
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--watch-pid", type=int, default=None, help="stop waiting when this process ends")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[megarl {time.strftime('%F %T')}] {message}", flush=True)

    healthy = wait_for_servers(args.urls, args.timeout, args.poll, args.watch_pid, log)
    missing = [u for u in args.urls if u not in healthy]
    if not healthy:
        log(f"no rollout server became healthy ({', '.join(args.urls)}); see the server logs")
        return 1
    if missing:
        log(f"continuing with {len(healthy)}/{len(args.urls)} healthy server(s); not answering: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
