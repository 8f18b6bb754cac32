"""torchrun for the local ranks `megarl train` starts itself (tp * pp > 1 outside a launcher).

Two differences from `torchrun`:
- Ctrl-C: torchrun starts each rank in a session of its own, so the terminal's SIGINT reaches only
  the agent, which would stop the ranks and raise. Here the agent passes each SIGINT on to its
  ranks and goes on waiting: the first makes them checkpoint and stop, a second ends them at once.
- Quiet about how ranks end: each rank says why it stopped in one line (interrupted, preempted,
  non-finite, a config error) or prints its own traceback, so the agent's failure report (a second
  traceback and a table per rank) says nothing new. The exit code is the first failed rank's.

    python -m megarl.train.local_launch [torchrun arguments] -m megarl.cli train RECIPE ...
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path


def child_pids() -> list[int]:
    """This process's children (Linux /proc; the ranks)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _pass_on(signum, frame) -> None:
    for pid in child_pids():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, _pass_on)  # the launcher gives `--signals-to-handle` without SIGINT
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode < 0:  # killed by a signal: nothing was printed by the rank itself
            print(f"megarl: rank {rank} was killed by signal {failure.signal_name()}", file=sys.stderr)
            return 1
        return failure.exitcode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
