"""`megarl train RECIPE [key=value ...]`: run RL training.

examples:
  megarl train configs/tiny_cpu.yaml
  megarl train configs/tiny_cpu.yaml actor.tp=2 run.steps=5
  torchrun --nproc-per-node 4 -m megarl.cli train configs/tiny_cpu.yaml actor.tp=2 actor.pp=2

Outside a launcher, a recipe with actor.tp * actor.pp > 1 re-launches itself under torchrun with
that many local processes (CPU: gloo). Under Slurm, `megarl submit` writes the sbatch script.

Ctrl-C checkpoints and exits 130 ("interrupted at step N; run the same command to resume"); a
second Ctrl-C exits at once. The same command resumes from the newest checkpoint, says so and exits
0 when the run already finished, and puts a new run in a numbered directory (runs/NAME-2) when the
run directory holds a run it cannot resume (megarl/train/run_dir.py).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from megarl.runtime.process import INTERRUPTED_EXIT_CODE


# Exit code after a signal-triggered checkpoint; the sbatch script requeues the job on it.
PREEMPTED_EXIT_CODE = 75
# Exit code when training stops on non-finite losses/gradients/weights (not requeued).
NONFINITE_EXIT_CODE = 3
# torchrun's agent leaves Ctrl-C to megarl.train.local_launch, which passes it on to the ranks.
AGENT_SIGNALS = "SIGTERM,SIGHUP,SIGQUIT"


def _first_rank() -> bool:
    """Rank 0, or a process outside any launcher (read from the environment: no torch import)."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _say_once(err: Exception) -> None:
    """One line on stderr from the first rank (every rank raises the same error)."""
    if _first_rank():
        print(f"megarl: {err}", file=sys.stderr, flush=True)


def _under_launcher() -> bool:
    return "RANK" in os.environ or ("SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ)


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C before training set up its own handler: nothing to save yet."""
    if _first_rank():
        os.write(2, b"megarl: interrupted before training started; nothing was saved\n")
    os._exit(INTERRUPTED_EXIT_CODE)


def main(argv: list[str]) -> int:
    if not argv:  # the recipe is required
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    try:
        return _main(argv)
    finally:  # a caller in Python (not the `megarl` program) gets its own Ctrl-C handling back
        signal.signal(signal.SIGINT, previous)


def _main(argv: list[str]) -> int:
    from megarl.config import ConfigError, read_config, validate_semantics
    from megarl.runtime.process import LockBusyError, RunDirectoryLock
    from megarl.train.run_dir import choose_run_dir

    try:
        cfg = read_config(argv[0], argv[1:])
    except ConfigError as err:
        print(f"megarl: config error: {err}", file=sys.stderr)
        return 2
    if not _under_launcher() and os.path.isdir(cfg.run.output_dir):  # under a launcher rank 0 takes the lock itself
        try:
            RunDirectoryLock(cfg.run.output_dir).acquire().release()
        except LockBusyError as err:
            print(f"megarl: {err}", file=sys.stderr)
            return 1
    # Every rank decides alike: nothing in the directory changes before all ranks have met in
    # init_runtime, and a launched rank is given the launcher's choice (run.output_dir).
    choice = choose_run_dir(cfg.run.output_dir, cfg.run.steps, cfg.run.resume)
    if choice.action == "finished":
        if _first_rank():
            print(f"megarl: {choice.message}", flush=True)
        return 0
    if choice.path != Path(cfg.run.output_dir):  # a numbered directory: a new run, or the one to resume
        if _first_rank():
            print(f"megarl: {choice.message}", file=sys.stderr, flush=True)
        cfg.run.output_dir = str(choice.path)
        argv = [*argv, f"run.output_dir={choice.path}"]
    try:
        validate_semantics(cfg)
    except ConfigError as err:
        print(f"megarl: config error: {err}", file=sys.stderr)
        return 2
    procs = local_ranks(cfg)
    if procs > 1 and not _under_launcher():
        return _launch_ranks(argv, procs)
    return run_training(cfg)


def local_ranks(cfg) -> int:
    """The ranks `megarl train` starts on this machine outside a launcher: the fewest megatron-core
    accepts, a multiple of tp x pp (the model's shards) and of ep x pp (each stage's expert groups)."""
    par = cfg.actor
    return math.lcm(par.tp * par.pp, par.ep * par.pp)


def _launch_ranks(argv: list[str], procs: int) -> int:
    """`megarl train` again in `procs` local ranks under torchrun (megarl.train.local_launch, which passes
    Ctrl-C on to the ranks: they checkpoint and stop). A second Ctrl-C ends the agent, and with it the
    ranks, at once."""
    from megarl.runtime.distributed import free_port
    from megarl.runtime.process import LAUNCHER_PID_ENV, die_with_parent

    cmd = [sys.executable, "-m", "megarl.train.local_launch", "--nproc-per-node", str(procs), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "--signals-to-handle", AGENT_SIGNALS,
           "-m", "megarl.cli", "train", *argv]
    print(f"megarl: launching {procs} processes: torchrun {' '.join(cmd[3:])}", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **{LAUNCHER_PID_ENV: str(os.getpid())})

    def agent_setup() -> None:  # in the agent, before exec
        die_with_parent()  # torchrun and its ranks die with this process (kill -9 included): megarl.runtime.process
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # until local_launch passes it on

    interrupts = 0
    agent = subprocess.Popen(cmd, env=env, preexec_fn=agent_setup)

    def on_interrupt(signum, frame) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            agent.kill()

    signal.signal(signal.SIGINT, on_interrupt)
    code = agent.wait()
    return INTERRUPTED_EXIT_CODE if interrupts and code != 0 else code


def run_training(cfg) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    from megarl.train.preemption import StopRequest

    # From here Ctrl-C (SIGINT), SIGTERM and Slurm's SIGUSR1 before the time limit ask the run to
    # checkpoint and stop at the next phase boundary, instead of raising wherever it is.
    stop = StopRequest.on_signals()
    from megarl.runtime.distributed import launcher_env
    from megarl.runtime.process import LockBusyError, RunDirectoryLock, tie_training_process

    tie_training_process()
    lock = RunDirectoryLock(cfg.run.output_dir)
    if launcher_env()[0] == 0:  # the driver holds the run directory for the whole run
        try:
            # A requeued Slurm job may find the lock of its killed predecessor on a network file
            # system until the server notices; give it time.
            lock.acquire(wait_s=180.0 if "SLURM_JOB_ID" in os.environ else 0.0)
        except LockBusyError as err:
            print(f"megarl: {err}", file=sys.stderr)
            return 1
    try:
        return _train_locked(cfg, stop)
    finally:
        lock.release()


def print_banner(cfg) -> None:
    """The run's startup banner, from the first rank: what runs, the run directory (new, or the
    checkpoint it resumes from), the cache."""
    from pathlib import Path

    from megarl.checkpoint.manager import complete_checkpoints
    from megarl import model_source
    from megarl.monitoring.console import banner
    from megarl.runtime.distributed import launcher_env

    if launcher_env()[0] != 0:
        return
    found = complete_checkpoints(Path(cfg.run.output_dir) / "checkpoints")
    parts, built = model_source.split_scheme(cfg.model.path), model_source.is_built(cfg.model.path)
    note = "" if built is None else f"{parts[1]} is cached" if built else f"{parts[1]} is not cached yet: pretrained now, once"
    print(banner(cfg, resume_step=int(found[-1].name.removeprefix("step_")) if found else None, model_note=note), flush=True)


def _train_locked(cfg, stop) -> int:
    from megarl.checkpoint.manager import NonFiniteWeightsError, NoVerifiedCheckpointError
    from megarl.train.preemption import PreemptedError
    from megarl.train.run_dir import clear_finished, mark_finished
    from megarl.train.trainer import NonFiniteTrainingError, Trainer

    print_banner(cfg)
    try:
        trainer = Trainer(cfg)
    except NoVerifiedCheckpointError as err:
        _say_once(err)
        return 1
    try:
        if trainer.is_driver:
            clear_finished(trainer.run_dir)
        try:
            trainer.train(stop)
        except PreemptedError:
            return INTERRUPTED_EXIT_CODE if stop.interrupted else PREEMPTED_EXIT_CODE
        except (NonFiniteTrainingError, NonFiniteWeightsError) as err:  # raised on every rank alike
            _say_once(err)
            return NONFINITE_EXIT_CODE
        if trainer.is_driver:
            from megarl.monitoring.plot import plot_run

            png = plot_run(trainer.run_dir)
            trainer.logger.console.print(f"metrics: {trainer.run_dir / 'metrics.jsonl'}  curves: {png}")
            mark_finished(trainer.run_dir, trainer.step)  # the same command again says so and exits
    finally:
        trainer.close()
        from megarl.runtime.distributed import shutdown_runtime

        shutdown_runtime()
    return 0
