"""Which directory a `megarl train` command runs in, decided from what is already there, before
anything heavy is imported:

    empty, or nothing logged and no checkpoint    a new run, here
    finished (finished.json) with >= run.steps    nothing to do: say so, exit 0
    a complete checkpoint (and run.resume)        resume from it, here
    a run logged without a checkpoint to resume,  a new run in the next free numbered directory
    or run.resume=false                           (runs/tiny_cpu-2, -3, ...), said in one line

So the same command resumes a stopped run and never appends a second run to another run's
metrics.jsonl: a run that cannot be resumed is kept as it is, next to the new one. (Refusing with
a choice would make the user delete or rename a directory by hand before re-running the command the
README gives; the numbered directory loses nothing and is named in the line it prints.)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

FINISHED_FILE = "finished.json"  # written by the driver when a run completes all its steps
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class RunDirChoice:
    action: Literal["new", "resume", "finished", "numbered"]
    path: Path
    message: str = ""  # one line for the user ("" for a plain new run)


def last_logged_step(run_dir: Path) -> int | None:
    """The last step in RUN_DIR/metrics.jsonl (None: nothing logged)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                last = json.loads(line).get("step", last)
            except json.JSONDecodeError:
                continue
    return last


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The newest complete checkpoint's step (verified later, when it is loaded)."""
    steps = [int(p.name[len("step_"):]) for p in (run_dir / "checkpoints").glob("step_*")
             if p.name[len("step_"):].isdigit() and (p / "COMPLETE").is_file()]
    return max(steps, default=None)


def finished_steps(run_dir: Path) -> int | None:
    path = run_dir / FINISHED_FILE
    try:
        return int(json.loads(path.read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_finished(run_dir: Path, steps: int) -> None:
    (run_dir / FINISHED_FILE).write_text(json.dumps({"steps": steps}) + "\n")


def clear_finished(run_dir: Path) -> None:
    """A run (re)starting in the directory: it is not finished until it completes again."""
    (run_dir / FINISHED_FILE).unlink(missing_ok=True)


def _unused(path: Path) -> bool:
    return last_logged_step(path) is None and latest_checkpoint_step(path) is None and finished_steps(path) is None


def choose_run_dir(output_dir: str | Path, steps: int, resume: bool) -> RunDirChoice:
    """The decision for RUN_DIR, then for RUN_DIR-2, -3, ... past runs that cannot be resumed: so the
    same command finds the run it started in a numbered directory again (to resume it, or to say it
    finished) instead of starting yet another."""
    base = Path(output_dir)
    skipped: Path | None = None
    k = 1
    while True:
        run_dir = base if k == 1 else Path(f"{base}-{k}")
        k += 1
        if _unused(run_dir):
            if skipped is None:
                return RunDirChoice("new", run_dir)
            why = ("run.resume=false" if not resume else
                   f"{skipped} holds a run with no checkpoint to resume (logged up to step {last_logged_step(skipped)})")
            return RunDirChoice("numbered", run_dir, f"{why}; this run goes to {run_dir}")
        done = finished_steps(run_dir)
        if resume and done is not None and done >= steps:
            return RunDirChoice("finished", run_dir, (
                f"{run_dir} already finished its {done} steps; nothing to do (metrics: {run_dir / METRICS_FILE}). "
                f"To train on, raise run.steps; for a new run, set run.output_dir"))
        if resume and latest_checkpoint_step(run_dir) is not None:
            note = "" if skipped is None else f"{base} holds a run with no checkpoint to resume; resuming {run_dir}"
            return RunDirChoice("resume", run_dir, note)
        skipped = run_dir
