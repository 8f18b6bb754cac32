"""Process lifetime of `megarl train`: kill -9 of the launcher ends the torchrun ranks it started
(and their rollout servers), and a run directory in use refuses a second run with one clear line."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


@pytest.mark.parametrize("tp", [1, 2], ids=["single-process", "torchrun-relaunch"])
def test_second_run_on_a_locked_run_directory_fails_clearly(write_recipe, tp):
    from megarl.runtime.process import RunDirectoryLock

    recipe, run_dir = write_recipe(f"locked{tp}", actor={"tp": tp})
    with RunDirectoryLock(run_dir):
        proc = subprocess.run([sys.executable, "-m", "megarl.cli", "train", str(recipe)], capture_output=True, text=True,
                              timeout=300, env=_env())
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"megarl: run directory {run_dir} is in use by another run (pid {os.getpid()}); wait for it to finish or stop "
        "it, or give this run another run.output_dir")
    assert "Traceback" not in proc.stderr and not (run_dir / "metrics.jsonl").exists()


def test_lock_is_exclusive_and_released_on_exit(tmp_path):
    from megarl.runtime.process import LockBusyError, RunDirectoryLock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from megarl.runtime.process import RunDirectoryLock; "
        f"RunDirectoryLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusyError, match=rf"in use by another run \(pid {holder.pid}\)"):
            RunDirectoryLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunDirectoryLock(tmp_path).acquire().release()  # the kernel dropped the dead holder's lock


def _cmdline(process) -> list[str]:
    """A process's command line; [] for one that exited meanwhile (a rank's short-lived fork, a zombie)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_kill_9_of_the_launcher_ends_its_ranks(write_recipe):
    recipe, run_dir = write_recipe("orphans", run={"steps": 200}, actor={"tp": 2}, checkpoint={"every": 1})
    launcher = subprocess.Popen([sys.executable, "-m", "megarl.cli", "train", str(recipe)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=_env())
    tree = []
    try:
        deadline = time.time() + 300
        while not (run_dir / "metrics.jsonl").exists():  # both ranks are training
            assert launcher.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.5)
        tree = psutil.Process(launcher.pid).children(recursive=True)
        # the ranks are torchrun's own children (a rank may fork short-lived helpers of its own, e.g.
        # while it checkpoints: those are its children, not ranks)
        (runner,) = [p for p in tree if "megarl.train.local_launch" in _cmdline(p)]  # torchrun, as megarl starts it
        ranks = [p for p in runner.children() if {"megarl.cli", "train"} <= set(_cmdline(p))]
        assert len(ranks) == 2, [(p.pid, _cmdline(p)[-3:]) for p in tree]
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"survived the launcher: {[_cmdline(p)[:6] for p in alive]}"
        from megarl.runtime.process import RunDirectoryLock

        RunDirectoryLock(run_dir).acquire().release()  # nothing holds the run directory any more
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass


def test_a_training_process_killed_mid_checkpoint_leaves_no_forked_writer():
    """A training process (here: not under the launcher, as `megarl train` at tp*pp = 1 or a Slurm rank)
    that forks the way megatron-core's checkpoint writer does, then dies by SIGKILL: the forked child dies
    with it, so nothing holds the run's stdout or memory. Before `tie_training_process` armed the at-fork
    hook outside the launcher's ranks, such a child blocked on its queue for ever (and `megarl train`'s
    stdout never closed)."""
    script = (
        "import multiprocessing as mp, os, signal, sys, time\n"
        "from megarl.runtime.process import tie_training_process\n"
        "tie_training_process()\n"
        "q = mp.get_context('fork').JoinableQueue()\n"
        "writer = mp.get_context('fork').Process(target=q.join)\n"  # waits for task_done that never comes
        "q.put(1); writer.start()\n"
        "print(writer.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {k: v for k, v in _env().items() if k != "MEGARL_LAUNCHER_PID"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    writer = int(proc.stdout.readline())
    assert proc.wait(30) == -signal.SIGKILL
    try:
        psutil.Process(writer).wait(timeout=10)
    except psutil.TimeoutExpired:
        os.kill(writer, signal.SIGKILL)
        pytest.fail("the forked child outlived the process that forked it")
    except psutil.NoSuchProcess:
        pass


@pytest.mark.parametrize("finished", [True, False], ids=["returned", "raised"])
def test_a_finished_command_exits_after_the_atexit_handlers_with_its_code(tmp_path, finished):
    """skip_finalization_at_exit: a command that returned (finished(code)) exits with its code right
    after the other atexit handlers (which still run, and buffered output is flushed); one that raised
    gets Python's normal exit (status 1, the traceback printed)."""
    marker = tmp_path / "handler_ran"
    script = (
        "import atexit, sys\n"
        "from megarl.runtime import process\n"
        "process.skip_finalization_at_exit()\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"  # a library's handler, registered later
        "sys.stdout.write('unflushed output')\n"
        + ("process.finished(3)\n" if finished else "raise RuntimeError('the command failed')\n")
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=_env())
    assert marker.read_text() == "yes" and proc.stdout == "unflushed output"
    if finished:
        assert proc.returncode == 3 and proc.stderr == ""
    else:
        assert proc.returncode == 1 and "RuntimeError: the command failed" in proc.stderr
