"""Which directory `megarl train` runs in, from what is already there (megarl.train.run_dir)."""

from __future__ import annotations

import json

from megarl.train.run_dir import choose_run_dir, clear_finished, mark_finished


def _logged(run_dir, *steps):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in steps))


def _checkpoint(run_dir, step, complete=True):
    path = run_dir / "checkpoints" / f"step_{step:06d}"
    path.mkdir(parents=True)
    if complete:
        (path / "COMPLETE").write_text("ok\n")


def test_new_resume_finished_and_numbered(tmp_path):
    run = tmp_path / "runs" / "demo"
    assert choose_run_dir(run, 30, True).action == "new"  # nothing there
    run.mkdir(parents=True)
    (run / ".megarl.lock").write_text("1\n")
    assert choose_run_dir(run, 30, True).action == "new"  # a lock file alone is no run

    _logged(run, 0, 1, 2)
    _checkpoint(run, 2, complete=False)  # a checkpoint cut short does not count
    choice = choose_run_dir(run, 30, True)
    assert (choice.action, choice.path) == ("numbered", tmp_path / "runs" / "demo-2")
    assert choice.message == f"{run} holds a run with no checkpoint to resume (logged up to step 2); this run goes to {choice.path}"

    _checkpoint(run, 10)
    assert choose_run_dir(run, 30, True).action == "resume"
    assert choose_run_dir(run, 30, False).message.startswith("run.resume=false; this run goes to")

    mark_finished(run, 30)
    done = choose_run_dir(run, 30, True)
    assert done.action == "finished" and "already finished its 30 steps; nothing to do" in done.message
    assert choose_run_dir(run, 40, True).action == "resume"  # raise run.steps: train on from the last checkpoint
    clear_finished(run)
    assert choose_run_dir(run, 30, True).action == "resume"


def test_numbering_skips_directories_in_use(tmp_path):
    run = tmp_path / "demo"
    _logged(run, 1)
    _logged(tmp_path / "demo-2", 1)
    (tmp_path / "demo-3").mkdir()  # empty: free
    assert choose_run_dir(run, 5, True).path == tmp_path / "demo-3"


def test_the_same_command_finds_its_numbered_run_again(tmp_path):
    """runs/demo holds a run that cannot be resumed; the run the command started in demo-2 is resumed
    (or reported finished) by the same command, not followed by demo-3."""
    run = tmp_path / "demo"
    _logged(run, 1, 2)
    assert choose_run_dir(run, 5, True).path == tmp_path / "demo-2"
    _logged(tmp_path / "demo-2", 1)
    _checkpoint(tmp_path / "demo-2", 1)
    choice = choose_run_dir(run, 5, True)
    assert (choice.action, choice.path) == ("resume", tmp_path / "demo-2")
    assert choice.message == f"{run} holds a run with no checkpoint to resume; resuming {tmp_path / 'demo-2'}"
    mark_finished(tmp_path / "demo-2", 5)
    assert choose_run_dir(run, 5, True).action == "finished"
    assert choose_run_dir(run, 5, False).path == tmp_path / "demo-3"
