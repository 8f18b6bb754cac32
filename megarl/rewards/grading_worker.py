"""A grading worker process: runs symbolic answer comparisons in its main thread, one at a time.

Started by `megarl.rewards.grading.GradingPool` as `python -m megarl.rewards.grading_worker FD`
where FD is its end of a socket pair. It is a fresh interpreter (not a fork of the trainer, so
no CUDA context, threads or trainer imports come along), imports only the grader, says
"ready", then loops: receive (task_id, pred, golds, rel_tol, soft_limit_s), answer
(task_id, status, correct). A SIGALRM interval timer interrupts Python code at the soft limit;
the parent kills the process at the hard limit if C code never yields.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from multiprocessing.connection import Connection


class SoftTimeout(BaseException):
    """Raised by the interval timer. A BaseException, so that library code catching
    `Exception` (math-verify and sympy both do) cannot swallow it."""


def _raise_soft_timeout(signum, frame):  # noqa: ARG001
    raise SoftTimeout()


def serve(connection: Connection) -> None:
    signal.signal(signal.SIGALRM, _raise_soft_timeout)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    from megarl.rewards.equivalence import any_gold_symbolic

    # Warm the imports and parser tables that math-verify and sympy load lazily on first use.
    any_gold_symbolic("\\frac{x+1}{2}", ["\\frac{1+x}{2}"])
    any_gold_symbolic("\\sqrt{2}", ["\\begin{pmatrix} 1 \\\\ x \\end{pmatrix}"])
    connection.send(("ready", os.getpid()))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, pred, golds, rel_tol, soft_limit_s = message
        status, correct = "ok", False
        try:
            if soft_limit_s:
                signal.setitimer(signal.ITIMER_REAL, soft_limit_s)
            correct = any_gold_symbolic(pred, golds, rel_tol)
        except SoftTimeout:
            status = "timeout"
        except Exception as error:  # noqa: BLE001  (any failure inside sympy grades as wrong)
            status = f"error: {type(error).__name__}: {str(error)[:200]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            connection.send((task_id, status, bool(correct)))
        except (BrokenPipeError, OSError):
            return


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m megarl.rewards.grading_worker FD (started by megarl.rewards.grading.GradingPool)", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(argv[0]))
    connection = Connection(sock.detach())
    serve(connection)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
