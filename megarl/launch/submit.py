"""`megarl submit RECIPE [key=value ...] --nodes N [--rollout-nodes M] ...`: render a recipe's Slurm
training job, save it in the run directory and submit it with sbatch.

examples:
  megarl submit configs/qwen2.5_7b.yaml --nodes 2 --rollout-nodes 1 --partition gpu --time 24:00:00 --requeue
  megarl submit configs/tiny_cpu.yaml --nodes 2 --rollout-nodes 1 --gpus-per-node 0 run.steps=3
  megarl submit configs/qwen2.5_32b.yaml --nodes 8 --rollout-nodes 4 --dry-run      (print the script)

The job is one allocation split by node rank: the first N-M nodes train (torchrun, rendezvous on
the first of them), the last M nodes run rollout servers whose URLs reach the trainer as
rollout.servers=[...]. --colocate runs trainer ranks and servers on every node instead. With
--requeue, Slurm's SIGUSR1 (--preempt-notice seconds before the time limit) makes the trainer
checkpoint and exit 75, and the job requeues itself and resumes. Everything is checked before
submitting; problems come back as one line naming the fix. See docs/slurm.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from megarl.config import ConfigError, load_config
from megarl.launch.layout import DEFAULT_PREEMPT_NOTICE_S, LaunchError, LaunchOptions, layout_warnings, plan_layout
from megarl.launch.render import (
    RunPaths, render_train_sbatch, resolve_model_dir, server_plan, slurm_source_dir, write_run_files,
)

SBATCH_TIMEOUT_S = 60
LOCAL_ONLY_PREFIXES = ("/tmp/", "/dev/shm/", "/var/tmp/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarl submit", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="YAML recipe (configs/...)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides key=value (e.g. run.steps=100 actor.tp=4)")
    parser.add_argument("--nodes", type=int, default=None, help="nodes in the job (default: the recipe's slurm.nodes)")
    parser.add_argument("--rollout-nodes", type=int, default=None,
                        help="of those, nodes that only run rollout servers (default: slurm.rollout_nodes)")
    parser.add_argument("--colocate", action="store_true",
                        help="every node runs trainer ranks and rollout servers on the same devices")
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs per node (default: slurm.gpus_per_node; 0 = CPU cluster with gloo)")
    parser.add_argument("--procs-per-node", type=int, default=None,
                        help="CPU clusters: trainer processes per trainer node (default actor.tp*actor.pp)")
    parser.add_argument("--servers-per-node", type=int, default=None,
                        help="rollout servers per server node (default: GPUs / rollout.server_tp; 1 on CPU)")
    parser.add_argument("--cpus-per-node", type=int, default=None,
                        help="CPUs to request per node (default: whole nodes, --exclusive, on GPU clusters)")
    parser.add_argument("--partition", default=None, help="Slurm partition (default: slurm.partition)")
    parser.add_argument("--account", default=None, help="Slurm account (default: slurm.account)")
    parser.add_argument("--time", default=None, help="time limit, e.g. 24:00:00 (default: slurm.time)")
    parser.add_argument("--requeue", action="store_true",
                        help="requeue the job when the trainer checkpoints before the time limit (and on node failure)")
    parser.add_argument("--preempt-notice", type=int, default=None, metavar="SECONDS",
                        help=f"signal the trainer this long before the time limit (default {DEFAULT_PREEMPT_NOTICE_S}, "
                             "at most 1/4 of it)")
    parser.add_argument("--server-port", type=int, default=None,
                        help=f"first rollout server port (default {LaunchOptions.server_port})")
    parser.add_argument("--master-port", type=int, default=None,
                        help="torchrun rendezvous port on the first trainer node (default: 20000 + job id %% 20000)")
    parser.add_argument("--net-ifname", default=None, help="network interface for NCCL/Gloo (e.g. ib0)")
    parser.add_argument("--job-name", default=None, help="Slurm job name (default megarl-<run.name>)")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="extra #SBATCH line, repeatable (e.g. --sbatch-arg=--qos=high)")
    parser.add_argument("--entry", default=None,
                        help="module (or .py file) and leading arguments each trainer rank runs before the recipe "
                             f"(default '{' '.join(LaunchOptions.entry)}')")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script; write and submit nothing")
    parser.add_argument("--no-path-checks", action="store_true",
                        help="with --dry-run: do not require the model and data paths to exist on this machine")
    return parser


def _options(args: argparse.Namespace, cfg) -> LaunchOptions:
    return LaunchOptions.from_recipe(
        cfg.slurm, nodes=args.nodes, rollout_nodes=args.rollout_nodes, gpus_per_node=args.gpus_per_node,
        colocate=args.colocate, procs_per_node=args.procs_per_node, servers_per_node=args.servers_per_node,
        cpus_per_node=args.cpus_per_node, partition=args.partition, account=args.account, time=args.time,
        requeue=args.requeue, preempt_notice_s=args.preempt_notice, server_port=args.server_port,
        master_port=args.master_port, net_ifname=args.net_ifname, job_name=args.job_name,
        entry=tuple(args.entry.split()) if args.entry else None,
    )


def check_paths(run_dir: Path, model_dir: str, python: str, dry_run: bool) -> list[str]:
    """Raise LaunchError for paths the job cannot use; return warnings for likely node-local paths."""
    parent = next((p for p in [run_dir, *run_dir.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise LaunchError(f"run.output_dir={run_dir} cannot be created ({parent} is not writable); "
                          "choose a directory on a shared filesystem you can write")
    if not Path(python).is_file():
        raise LaunchError(f"the Python interpreter {python} does not exist; run megarl submit from the environment "
                          "the job should use")
    if not dry_run and shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on PATH; run megarl submit on a Slurm login node (or use --dry-run)")
    warnings = []
    for what, path in (("run.output_dir", str(run_dir)), ("the model", model_dir)):
        if path.startswith(LOCAL_ONLY_PREFIXES):
            warnings.append(f"{what} {path} is on node-local storage on most clusters; "
                            "the compute nodes must see it (use a shared filesystem)")
    return warnings


def submit_script(script: Path, timeout_s: float = SBATCH_TIMEOUT_S) -> str:
    """`sbatch --parsable SCRIPT` under a timeout; returns the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"sbatch did not answer within {timeout_s:.0f} s; is slurmctld reachable? (scontrol ping)") from None
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise LaunchError(f"sbatch refused the job: {message[-1] if message else 'rc=' + str(proc.returncode)}")
    return proc.stdout.strip().split(";")[0]


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.no_path_checks and not args.dry_run:
        print("megarl submit: --no-path-checks only works with --dry-run (a submitted job needs its paths)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.recipe, args.overrides, check_files=not args.no_path_checks)
        opts = _options(args, cfg)
        layout = plan_layout(cfg, opts)
        run_dir = Path(cfg.run.output_dir).resolve()
        paths = RunPaths(run_dir)
        model_dir = resolve_model_dir(cfg, build=not args.dry_run)
        warnings = layout_warnings(cfg, layout, opts)
        if not args.no_path_checks:
            warnings += check_paths(run_dir, model_dir, sys.executable, args.dry_run)
        slurm_source_dir()
        venv = sys.prefix if sys.prefix != sys.base_prefix else None
        script = render_train_sbatch(cfg, layout, opts, paths, recipe_source=args.recipe, model_dir=model_dir,
                                     submit_dir=Path.cwd(), python=sys.executable, venv=venv,
                                     extra_directives=args.sbatch_arg)
    except (ConfigError, LaunchError) as err:
        print(f"megarl submit: {err}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"megarl submit: warning: {warning}", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    plan = server_plan(cfg, layout, model_dir, opts.server_port)
    write_run_files(cfg, layout, plan, paths, script)
    try:
        job_id = submit_script(paths.sbatch_file)
    except LaunchError as err:
        print(f"megarl submit: {err} (the script is in {paths.sbatch_file})", file=sys.stderr)
        return 1
    print(f"submitted job {job_id}: {layout.describe()[0]}")
    print(f"  script     {paths.sbatch_file}")
    print(f"  job log    {paths.job_log(job_id)}")
    print(f"  node logs  {paths.log_dir}/job_{job_id}/restart_<n>/  (trainer_<node>.log, rollout_<node>.log, "
          "server_<node>_<i>.log, torchrun_<node>/)")
    print(f"  metrics    {run_dir / 'metrics.jsonl'}   checkpoints {run_dir / 'checkpoints'}")
    print(f"  follow     tail -f {paths.job_log(job_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
