"""Grading a whole rollout: extraction, fast in-process checks, symbolic checks in a worker pool.

`grade_batch(responses, golds, template=..., timeout=...)` returns one `GradeResult` per
response. Most answers are settled in the caller's process by `quick_equal` (string, number,
structure comparison: microseconds). The rest go to `GradingPool`, a set of worker processes
that run math-verify/sympy in their main thread (math-verify's own timeout relies on
`signal.alarm`, which only works there). `timeout` bounds the wall clock of grading one
answer, in-process work included:
- the in-process part is bounded by construction: extraction is one linear pass over the
  response, and `quick_equal` is linear in the answer and never normalizes more than
  MAX_ANSWER_CHARS characters (under 0.1 s; tests/rewards/test_grading_limits.py);
- a symbolic comparison gets what is left of `timeout` after that: the worker arms an
  interval timer that interrupts Python code at 0.8 of it, and if the worker is stuck in C
  code that never returns to the interpreter (sympy evaluating 10^{10^{10^{10}}}), the parent
  kills it just before the limit and starts a replacement when more work is queued.
A pathological answer therefore costs at most the limit and grades as wrong; the trainer
never hangs.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from megarl.rewards.equivalence import MAX_SYMBOLIC_CHARS, any_gold_quick
from megarl.rewards.extraction import ExtractedAnswer, extract_answer, extract_r1_answer, is_truncated, r1_format_ok

DEFAULT_TIMEOUT_S = 5.0


@dataclass
class GradeResult:
    """The grade of one response."""

    extracted: str | None  # the final answer taken from the response (None: no answer found)
    correct: bool
    reward: float = 0.0  # filled by the reward scheme (megarl.rewards.schemes.compute_rewards)
    truncated: bool = False  # the rollout hit its length limit
    has_answer: bool = False  # an answer was found (a \boxed{} or an r1 <answer> block, or a fallback)
    answer_source: str = "none"  # "boxed", "answer_is", "last_number", "r1_answer" or "none"
    format_ok: bool | None = None  # r1 template: the <think>...</think><answer>...</answer> shape
    method: str = "none"  # what decided it: "quick", "symbolic", "timeout", "worker_error", "none"
    timed_out: bool = False
    seconds: float = 0.0  # wall-clock seconds spent grading this answer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Worker pool


@dataclass
class _Worker:
    process: subprocess.Popen
    connection: Connection
    ready: bool = False
    task: tuple | None = None  # (task_id, started_at, seconds until the parent kills it)


@dataclass
class SymbolicVerdict:
    correct: bool
    method: str  # "symbolic", "timeout" or "worker_error"
    seconds: float
    detail: str = ""


@dataclass
class GradingPoolStats:
    tasks: int = 0
    timeouts: int = 0
    killed_workers: int = 0
    errors: int = 0
    worst_seconds: float = 0.0
    worst_task: str = field(default="")


def _package_root() -> str:
    import megarl

    return os.path.dirname(os.path.dirname(os.path.abspath(megarl.__file__)))


class GradingPool:
    """Worker processes that run symbolic comparisons, each under a hard wall-clock limit.

    Workers are fresh interpreters (`python -m megarl.rewards.grading_worker`), not forks of
    the caller. Use as a context manager or call `close()`. One `compare` at a time (locked).
    """

    MAX_STARTUP_FAILURES = 3
    # The parent kills a stuck worker this long before the limit (at most 10% of it), so the
    # kill and the reaping still fit inside the limit (0.1 s missed it by 0.01 s on a loaded 2-core machine).
    KILL_MARGIN_S = 0.25

    def __init__(self, num_workers: int | None = None, timeout: float = DEFAULT_TIMEOUT_S, soft_limit_fraction: float | None = 0.8, lazy: bool = False):
        """num_workers: processes (default min(4, cores)); timeout: hard limit per comparison in
        seconds; soft_limit_fraction: the worker interrupts itself at this fraction of the limit
        (cheaper than a kill and respawn); None leaves only the hard kill. lazy: start the workers
        on the first `compare` instead of now (a tool that may never need them)."""
        if timeout <= 0:
            raise ValueError(f"grading timeout must be > 0 seconds, got {timeout}")
        if soft_limit_fraction is not None and not 0 < soft_limit_fraction < 1:
            raise ValueError(f"soft_limit_fraction must be in (0, 1) or None, got {soft_limit_fraction}")
        self.soft_limit_fraction = soft_limit_fraction
        self.num_workers = num_workers or max(1, min(4, os.cpu_count() or 1))
        self.timeout = float(timeout)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._startup_failures = 0
        self.stats = GradingPoolStats()
        self._closed = False
        if not lazy:
            self.start()

    def start(self) -> None:
        """Start the workers now (they import sympy in the background; about 1 s)."""
        while len(self._workers) < self.num_workers:
            self._workers.append(self._start_worker())

    def _start_worker(self) -> _Worker:
        parent_socket, child_socket = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        process = subprocess.Popen(
            [sys.executable, "-m", "megarl.rewards.grading_worker", str(child_socket.fileno())],
            pass_fds=(child_socket.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
            # A session of its own: the terminal's Ctrl-C (sent to the trainer's process group) must not
            # reach a worker still importing, before it ignores SIGINT (a KeyboardInterrupt traceback).
            # The pool stops its workers; one whose parent died reads EOF and exits.
            start_new_session=True,
        )
        child_socket.close()
        return _Worker(process, Connection(parent_socket.detach()))

    def _stop(self, worker: _Worker) -> None:
        """Kill and reap a worker (crashed or stuck), counting workers that died before ready."""
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()
        worker.connection.close()
        if not worker.ready:
            self._startup_failures += 1
            if self._startup_failures >= self.MAX_STARTUP_FAILURES:
                self.close()
                raise RuntimeError(
                    f"{self._startup_failures} grading workers exited before they were ready (exit code "
                    f"{worker.process.returncode}); run `python -m megarl.rewards.grading_worker` errors are on stderr above. "
                    "Check that megarl, sympy and math-verify import in a fresh interpreter."
                )

    def compare(
        self,
        tasks: Sequence[tuple[str, list[str]]],
        timeout: float | None = None,
        rel_tol: float = 1e-4,
        startup_timeout: float = 120.0,
        budgets: Sequence[float] | None = None,
    ) -> list[SymbolicVerdict]:
        """Symbolic verdicts for (pred, golds) pairs; each one finishes within `timeout` seconds.

        budgets: per-task seconds instead of `timeout` (what is left of an answer's limit after
        the caller's own work on it); each is clamped to [0.01, timeout].
        """
        if self._closed:
            raise RuntimeError("GradingPool is closed; create a new one")
        limit = float(timeout or self.timeout)
        if budgets is not None and len(budgets) != len(tasks):
            raise ValueError(f"compare got {len(budgets)} budgets for {len(tasks)} tasks; give one per task or none")
        task_limits = [min(limit, max(0.01, float(b))) for b in budgets] if budgets is not None else [limit] * len(tasks)
        results: list[SymbolicVerdict | None] = [None] * len(tasks)
        if not tasks:
            return []
        self.start()
        pending = deque(range(len(tasks)))
        with self._lock:
            startup_deadline = time.monotonic() + startup_timeout
            while pending or any(w.task is not None for w in self._workers):
                for worker in self._workers:
                    if worker.ready and worker.task is None and pending:
                        task_id = pending.popleft()
                        pred, golds = tasks[task_id]
                        task_limit = task_limits[task_id]
                        # The worker's own timer fires a little earlier, so most timeouts end without a kill.
                        soft_limit = max(0.01, task_limit * self.soft_limit_fraction) if self.soft_limit_fraction else 0.0
                        worker.connection.send((task_id, pred, list(golds), rel_tol, soft_limit))
                        kill_at = task_limit - min(self.KILL_MARGIN_S, 0.1 * task_limit)
                        worker.task = (task_id, time.monotonic(), kill_at)
                now = time.monotonic()
                deadlines = [w.task[1] + w.task[2] for w in self._workers if w.task is not None]
                wait_s = max(0.0, min(deadlines) - now) if deadlines else 0.5
                connections = [w.connection for w in self._workers if w.task is not None or not w.ready]
                ready = wait(connections, timeout=wait_s)
                now = time.monotonic()
                stopped: list[_Worker] = []
                for worker in self._workers:
                    if worker.connection in ready:
                        try:
                            message = worker.connection.recv()
                        except (EOFError, OSError):
                            message = None
                        if message is None:  # the worker died (crash, out-of-memory kill)
                            if worker.task is not None:
                                task_id, started, _ = worker.task
                                results[task_id] = SymbolicVerdict(False, "worker_error", now - started, "worker died")
                                self.stats.errors += 1
                            stopped.append(worker)
                            continue
                        if message[0] == "ready":
                            worker.ready = True
                            self._startup_failures = 0
                            continue
                        task_id, status, correct = message
                        seconds = now - worker.task[1]
                        worker.task = None
                        if status == "ok":
                            results[task_id] = SymbolicVerdict(correct, "symbolic", seconds)
                        elif status == "timeout":
                            results[task_id] = SymbolicVerdict(False, "timeout", seconds)
                            self.stats.timeouts += 1
                        else:
                            results[task_id] = SymbolicVerdict(False, "worker_error", seconds, status)
                            self.stats.errors += 1
                    elif worker.task is not None and now >= worker.task[1] + worker.task[2]:
                        task_id, started, _ = worker.task
                        worker.process.kill()  # first, so the verdict's seconds include the kill
                        results[task_id] = SymbolicVerdict(False, "timeout", time.monotonic() - started, "killed at the hard limit")
                        self.stats.timeouts += 1
                        self.stats.killed_workers += 1
                        stopped.append(worker)
                for worker in stopped:
                    self._workers.remove(worker)
                    self._stop(worker)
                    if pending:
                        self._workers.append(self._start_worker())  # else `start()` tops up on the next compare
                if self._workers and not any(w.ready for w in self._workers) and now > startup_deadline:
                    self.close()
                    raise RuntimeError(
                        f"no grading worker became ready within {startup_timeout:.0f} s; "
                        "check that `python -m megarl.rewards.grading_worker` can import megarl, sympy and math-verify"
                    )
        for task_id, verdict in enumerate(results):
            assert verdict is not None
            self.stats.tasks += 1
            if verdict.seconds > self.stats.worst_seconds:
                self.stats.worst_seconds = verdict.seconds
                self.stats.worst_task = tasks[task_id][0][:80]
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop all workers (politely, then by kill)."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers:
            try:
                worker.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.connection.close()
        self._workers = []

    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default_pool: GradingPool | None = None
_default_pool_lock = threading.Lock()


def default_pool(timeout: float = DEFAULT_TIMEOUT_S) -> GradingPool:
    """A process-wide pool, started on first use and closed at exit."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None or _default_pool._closed:
            _default_pool = GradingPool(timeout=timeout)
            atexit.register(_default_pool.close)
        return _default_pool


# ---------------------------------------------------------------------------------------------
# Batch API


def _as_gold_list(gold: str | Sequence[str]) -> list[str]:
    if isinstance(gold, str):
        return [gold]
    golds = [str(g) for g in gold]
    if not golds:
        raise ValueError("a gold answer list is empty; give at least one gold answer")
    return golds


def extract_for_template(response: str, template: str, extraction_mode: str = "boxed") -> tuple[ExtractedAnswer, bool | None]:
    """The answer and (r1 only) the format verdict of a response for a prompt template."""
    if template == "r1":
        return extract_r1_answer(response, extraction_mode), r1_format_ok(response)
    return extract_answer(response, extraction_mode), None


def grade_batch(
    responses: Sequence[str],
    golds: Sequence[str | Sequence[str]],
    template: str = "qwen-boxed",
    timeout: float = DEFAULT_TIMEOUT_S,
    finish_reasons: Sequence[object] | None = None,
    pool: GradingPool | None = None,
    extraction_mode: str = "boxed",
    rel_tol: float = 1e-4,
) -> list[GradeResult]:
    """Grade a rollout: one GradeResult per response (whether it is correct and why; the reward
    scheme, `megarl.rewards.schemes.compute_rewards`, turns grades into rewards).

    golds[i] is one gold answer or a list of acceptable ones. finish_reasons[i] is the
    rollout's finish reason (SGLang dict or string); "length" marks the response truncated.
    Symbolic comparisons run in `pool` (the process-wide default pool when None), each under
    `timeout` seconds.
    """
    if len(responses) != len(golds):
        raise ValueError(f"grade_batch got {len(responses)} responses but {len(golds)} gold answers; pass one gold per response")
    if finish_reasons is not None and len(finish_reasons) != len(responses):
        raise ValueError(f"grade_batch got {len(finish_reasons)} finish_reasons for {len(responses)} responses")
    results: list[GradeResult] = []
    symbolic_tasks: list[tuple[str, list[str]]] = []
    symbolic_index: list[int] = []
    for index, (response, gold) in enumerate(zip(responses, golds)):
        started = time.perf_counter()
        gold_list = _as_gold_list(gold)
        extracted, format_ok = extract_for_template(response, template, extraction_mode)
        truncated = is_truncated(finish_reasons[index]) if finish_reasons is not None else False
        result = GradeResult(
            extracted=extracted.text,
            correct=False,
            truncated=truncated,
            has_answer=extracted.text is not None,
            answer_source=extracted.source,
            format_ok=format_ok,
        )
        if extracted.text is not None:
            verdict = any_gold_quick(extracted.text, gold_list, rel_tol)
            if verdict is None and len(extracted.text) <= MAX_SYMBOLIC_CHARS:
                symbolic_tasks.append((extracted.text, gold_list))
                symbolic_index.append(index)
            else:
                result.correct = bool(verdict)
                result.method = "quick"
        result.seconds = time.perf_counter() - started
        results.append(result)
    if symbolic_tasks:
        grading_pool = pool or default_pool(timeout)
        # Each answer's limit covers its in-process part too: the worker gets what is left.
        budgets = [timeout - results[index].seconds for index in symbolic_index]
        verdicts = grading_pool.compare(symbolic_tasks, timeout=timeout, rel_tol=rel_tol, budgets=budgets)
        for index, verdict in zip(symbolic_index, verdicts):
            results[index].correct = verdict.correct
            results[index].method = verdict.method
            results[index].timed_out = verdict.method == "timeout"
            results[index].seconds += verdict.seconds
    return results


def grade_answer(
    response: str,
    gold: str | Sequence[str],
    template: str = "qwen-boxed",
    timeout: float = DEFAULT_TIMEOUT_S,
    finish_reason: object = None,
    pool: GradingPool | None = None,
) -> GradeResult:
    """Grade one response (a batch of one)."""
    return grade_batch([response], [gold], template, timeout, [finish_reason], pool)[0]

