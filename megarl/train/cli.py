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


def _under_launcher() -> bool:
    return "RANK" in os.environ or ("SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from megarl.config import load_config_for_cli

    cfg = load_config_for_cli(argv)
    if cfg is None:
        return 2
    procs = cfg.actor.tp * cfg.actor.pp
    if procs > 1 and not _under_launcher():
        from megarl.runtime.distributed import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "megarl.cli", "train", *argv]
        print(f"megarl: launching {procs} processes: {' '.join(cmd[1:])}", file=sys.stderr)
        return subprocess.call(cmd, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    return run_training(cfg)


def run_training(cfg) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    from megarl.train.preemption import PreemptedError, StopRequest
    from megarl.train.trainer import Trainer

    trainer = Trainer(cfg)
    stop = StopRequest.on_signals()  # Slurm sends SIGUSR1 shortly before the time limit
    try:
        try:
            trainer.train(stop)
        except PreemptedError:
            return PREEMPTED_EXIT_CODE
        if trainer.is_driver:
            from megarl.monitoring.plot import plot_run

            png = plot_run(trainer.run_dir)
            trainer.logger.console.print(f"metrics: {trainer.run_dir / 'metrics.jsonl'}  curves: {png}")
    finally:
        trainer.close()
        from megarl.runtime.distributed import shutdown_runtime

        shutdown_runtime()
    return 0
