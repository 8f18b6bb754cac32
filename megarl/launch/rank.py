"""One trainer rank under torchrun in a Slurm job: run an entry point and record its exit code.

    python -m megarl.launch.rank megarl.cli train RECIPE key=value ...     (a module)
    python -m megarl.launch.rank path/to/script.py ARGS ...                (a file)

torchrun reports a failed worker as exit code 1 whatever the worker returned, so each rank writes
its own code to `$MEGARL_EXIT_CODE_DIR/rank_<RANK>.code`; slurm/node_role.sh reads them to tell a
preempted trainer (exit 75 after a checkpoint) from a crash. Until the entry point installs its
own handlers, SIGUSR1 is logged and ignored here instead of killing the rank (node_role.sh keeps
re-sending it, so the trainer still hears it once its handler is in place).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path


def _early_stop_signal(signum, frame) -> None:
    print(f"megarl.launch.rank: {signal.Signals(signum).name} before the trainer's handler is installed; "
          "it will be re-sent", file=sys.stderr, flush=True)


def run_entry(entry: str, args: list[str]) -> int:
    """Run `entry` (a module name or a .py file) as __main__ with `args`; return its exit code."""
    sys.argv = [entry, *args]
    try:
        if entry.endswith(".py") or os.sep in entry:
            runpy.run_path(entry, run_name="__main__")
        else:
            runpy.run_module(entry, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


def record_exit_code(code: int) -> None:
    directory = os.environ.get("MEGARL_EXIT_CODE_DIR")
    if not directory:
        return
    rank = os.environ.get("RANK", "0")
    path = Path(directory) / f"rank_{rank}.code"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{code}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    signal.signal(signal.SIGUSR1, _early_stop_signal)
    code = 1
    try:
        code = run_entry(argv[0], argv[1:])
    finally:
        record_exit_code(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
