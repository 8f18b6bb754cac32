"""`megarl train RECIPE [key=value ...]`: run RL training.

examples:
  megarl train configs/tiny_cpu.yaml
  megarl train configs/tiny_cpu.yaml actor.tp=2 run.steps=5
  torchrun --nproc-per-node 4 -m megarl.cli train configs/tiny_cpu.yaml actor.tp=2 actor.pp=2

Outside a launcher, a recipe with actor.tp * actor.pp > 1 re-launches itself under torchrun with
that many local processes (CPU: gloo). Under Slurm, `megarl submit` writes the sbatch script.
"""

from __future__ import annotations

import os
import subprocess
import sys


# Exit code after a signal-triggered checkpoint; the sbatch script requeues the job on it.
PREEMPTED_EXIT_CODE = 75
# Exit code when training stops on non-finite losses/gradients/weights (not requeued).
NONFINITE_EXIT_CODE = 3


def _say_once(err: Exception) -> None:
    """One line on stderr from the first rank (every rank raises the same error)."""
    from megarl.runtime.distributed import launcher_env

    if launcher_env()[0] == 0:
        print(f"megarl: {err}", file=sys.stderr, flush=True)


def _under_launcher() -> bool:
    return "RANK" in os.environ or ("SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ)


def main(argv: list[str]) -> int:
    if not argv:  # the recipe is required
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from megarl.config import load_config_for_cli

    cfg = load_config_for_cli(argv)
    if cfg is None:
        return 2
    procs = cfg.actor.tp * cfg.actor.pp
    if procs > 1 and not _under_launcher():
        from megarl.runtime.distributed import free_port
        from megarl.runtime.process import LAUNCHER_PID_ENV, LockBusyError, RunDirectoryLock, die_with_parent

        try:  # fail before starting any rank; rank 0 takes the lock for the run itself
            RunDirectoryLock(cfg.run.output_dir).acquire().release()
        except LockBusyError as err:
            print(f"megarl: {err}", file=sys.stderr)
            return 1
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "megarl.cli", "train", *argv]
        print(f"megarl: launching {procs} processes: {' '.join(cmd[1:])}", file=sys.stderr)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **{LAUNCHER_PID_ENV: str(os.getpid())})
        # torchrun and its ranks die with this process (kill -9 included): see megarl.runtime.process
        return subprocess.call(cmd, env=env, preexec_fn=die_with_parent)
    return run_training(cfg)


def run_training(cfg) -> int:
    import warnings

    warnings.filterwarnings("ignore")
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
        return _train_locked(cfg)
    finally:
        lock.release()


def _train_locked(cfg) -> int:
    from megarl.checkpoint.manager import NonFiniteWeightsError, NoVerifiedCheckpointError
    from megarl.train.preemption import PreemptedError, StopRequest
    from megarl.train.trainer import NonFiniteTrainingError, Trainer

    try:
        trainer = Trainer(cfg)
    except NoVerifiedCheckpointError as err:
        _say_once(err)
        return 1
    stop = StopRequest.on_signals()  # Slurm sends SIGUSR1 shortly before the time limit
    try:
        try:
            trainer.train(stop)
        except PreemptedError:
            return PREEMPTED_EXIT_CODE
        except (NonFiniteTrainingError, NonFiniteWeightsError) as err:  # raised on every rank alike
            _say_once(err)
            return NONFINITE_EXIT_CODE
        if trainer.is_driver:
            from megarl.monitoring.plot import plot_run

            png = plot_run(trainer.run_dir)
            trainer.logger.console.print(f"metrics: {trainer.run_dir / 'metrics.jsonl'}  curves: {png}")
    finally:
        trainer.close()
        from megarl.runtime.distributed import shutdown_runtime

        shutdown_runtime()
    return 0
