"""`megarl submit RECIPE [key=value ...] --nodes N [--rollout-nodes M] ...`: render a recipe's Slurm
training job, save it in the run directory and submit it with sbatch.

examples:
  megarl submit configs/simplerl_zoo_qwen2.5_7b.yaml --nodes 2 --rollout-nodes 1 --partition gpu --time 24:00:00 --requeue
  megarl submit configs/tiny_cpu.yaml --nodes 2 --rollout-nodes 1 --gpus-per-node 0 run.steps=3 rollout.transport=distributed
  megarl submit configs/simplerl_zoo_qwen2.5_32b.yaml --nodes 8 --rollout-nodes 4 --dry-run      (print the script)

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

from megarl.config import ConfigError, load_config, planning_config_json
from megarl.launch.layout import (
    DEFAULT_PREEMPT_NOTICE_S, LEAD_MARGIN, MASTER_PORT_BASE, MASTER_PORT_SPAN, LaunchError, LaunchOptions, layout_warnings,
    plan_layout,
)
from megarl.launch.render import (
    RunPaths, render_train_sbatch, resolve_model_dir, server_plan, slurm_source_dir, write_run_files,
)
from megarl.model_configs.experts import Experts, check_experts

SBATCH_TIMEOUT_S = 60
CHECKPOINT_WRITE_GBPS = 1.0  # assumed per trainer node when estimating the checkpoint's share of the notice
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
                        help="signal the trainer this long before the time limit (default: 1.5x one step plus one "
                             f"checkpoint, measured in a previous run's metrics or estimated from the model size; at "
                             f"least {DEFAULT_PREEMPT_NOTICE_S}, at most 1/4 of the limit)")
    parser.add_argument("--server-port", type=int, default=None,
                        help=f"first rollout server port (default {LaunchOptions.server_port})")
    parser.add_argument("--master-port", type=int, default=None,
                        help="torchrun rendezvous port on the first trainer node (default: 20000 + job id %% 10000, "
                             "below the server ports)")
    parser.add_argument("--mem", default=None,
                        help="memory per node for #SBATCH --mem (default 0 = all of it on GPU nodes; e.g. 500G)")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0,
                        help="memory of one GPU in GiB for the per-GPU memory estimate (default 80: H100/A100-80G)")
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


MAX_PORT = 65535


def check_ports(opts: LaunchOptions, servers_per_node: int) -> None:
    """Ports are TCP ports, and every rollout server's port (base + index on its node) fits too."""
    for flag, port in (("--server-port", opts.server_port), ("--master-port", opts.master_port)):
        if port is not None and not 1 <= port <= MAX_PORT:
            raise LaunchError(f"{flag}={port} is not a TCP port; use one in 1-{MAX_PORT}")
    last = opts.server_port + max(servers_per_node, 1) - 1
    if last > MAX_PORT:
        raise LaunchError(f"--server-port={opts.server_port}: {servers_per_node} servers per node would use ports "
                          f"{opts.server_port}..{last}, past {MAX_PORT}; use a lower --server-port")
    if opts.master_port is None:
        low, high = MASTER_PORT_BASE, MASTER_PORT_BASE + MASTER_PORT_SPAN - 1
        if opts.server_port <= high and last >= low:
            raise LaunchError(f"server ports {opts.server_port}..{last} overlap the rendezvous ports {low}..{high} "
                              f"drawn by job id; use --server-port {high + 1} or above, or set --master-port")
    elif opts.server_port <= opts.master_port <= last:
        raise LaunchError(f"--master-port={opts.master_port} is one of the server ports {opts.server_port}..{last}; "
                          "choose a port outside that range")


def _options(args: argparse.Namespace, cfg) -> LaunchOptions:
    return LaunchOptions.from_recipe(
        cfg.slurm, nodes=args.nodes, rollout_nodes=args.rollout_nodes, gpus_per_node=args.gpus_per_node,
        colocate=args.colocate, procs_per_node=args.procs_per_node, servers_per_node=args.servers_per_node,
        cpus_per_node=args.cpus_per_node, partition=args.partition, account=args.account, time=args.time,
        requeue=args.requeue, preempt_notice_s=args.preempt_notice, server_port=args.server_port,
        master_port=args.master_port, net_ifname=args.net_ifname, job_name=args.job_name,
        entry=tuple(args.entry.split()) if args.entry else None, mem=args.mem,
    )


def memory_estimate(cfg, layout, model_dir: str, gpu_gib: float) -> str | None:
    """The per-GPU memory table for a GPU job, from the model's config.json beside the weights or
    model.config (None on CPU clusters or when neither is known: `main` then says so); raises
    LaunchError when the layout does not fit, naming the fix."""
    from megarl.launch.memory import check_fits, estimate_memory
    from megarl.models.spec import ModelSpec

    config_json = planning_config_json(cfg, model_dir)
    if not layout.on_gpu or config_json is None:
        return None
    spec, experts = ModelSpec.from_hf(config_json), Experts.from_hf_path(config_json)
    try:  # (load_config checks it too, unless --no-path-checks skipped the model)
        for section in ["actor"] + (["critic"] if cfg.uses_critic else []):
            check_experts(experts, getattr(cfg, section).ep, field=section)
    except ValueError as err:
        raise LaunchError(str(err)) from None
    estimate = estimate_memory(cfg, spec, layout, gpu_gib, experts)
    check_fits(estimate, cfg, spec, layout, experts)
    return estimate.table()


def lead_time(cfg, opts: LaunchOptions, model_dir: str) -> tuple[float | None, str]:
    """Seconds of one step plus one checkpoint, and how they were found: the step from a previous run's
    metrics in run.output_dir (measured), the checkpoint from the model's size at CHECKPOINT_WRITE_GBPS
    per trainer node (estimated)."""
    import json

    from megarl.launch.memory import checkpoint_bytes
    from megarl.models.spec import ModelSpec

    parts, notes = 0.0, []
    metrics = Path(cfg.run.output_dir) / "metrics.jsonl"
    if metrics.is_file():
        steps = [row["perf/step_s"] for row in map(json.loads, metrics.read_text().splitlines()[-20:])
                 if isinstance(row.get("perf/step_s"), (int, float))]
        if steps:
            parts += max(steps)
            notes.append(f"step {max(steps):.0f} s measured in {metrics}")
    config_json = planning_config_json(cfg, model_dir)
    if cfg.checkpoint.every and config_json is not None:
        trainer_nodes = opts.nodes if (opts.colocate or cfg.rollout.colocate) else opts.nodes - opts.rollout_nodes
        size = checkpoint_bytes(cfg, ModelSpec.from_hf(config_json), Experts.from_hf_path(config_json))
        seconds = size / max(1, trainer_nodes) / (CHECKPOINT_WRITE_GBPS * 1e9)
        parts += seconds
        notes.append(f"checkpoint about {seconds:.0f} s estimated at {CHECKPOINT_WRITE_GBPS:g} GB/s per trainer node")
    return (parts or None), "; ".join(notes)


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
        # A plan (--dry-run) needs the model's config, not its weights: model.config stands in for them.
        cfg = load_config(args.recipe, args.overrides, check_files=not args.no_path_checks, weights=not args.dry_run)
        opts = _options(args, cfg)
        lead_note = ""
        if opts.preempt_notice_s is None:
            opts.lead_time_s, lead_note = lead_time(cfg, opts, resolve_model_dir(cfg, build=False))
        check_ports(opts, 0)
        layout = plan_layout(cfg, opts)
        check_ports(opts, layout.servers_per_node)
        run_dir = Path(cfg.run.output_dir).resolve()
        paths = RunPaths(run_dir)
        model_dir = resolve_model_dir(cfg, build=not args.dry_run)
        memory = memory_estimate(cfg, layout, model_dir, args.gpu_memory_gb)
        warnings = layout_warnings(cfg, layout, opts)
        if layout.on_gpu and memory is None:  # never dropped silently
            warnings.append(f"no per-GPU memory estimate: no config.json at {model_dir}; set model.config to a config "
                            "megarl ships (megarl/model_configs) or to the model's config.json")
        if args.dry_run and not Path(model_dir).exists() and cfg.model.config is not None:
            warnings.append(f"model.path {model_dir} is not on this machine; planned from model.config={cfg.model.config} "
                            "(the job's nodes need the weights there)")
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
    if memory:
        print(memory, file=sys.stderr)
    if lead_note:
        print(f"time-limit notice: SIGUSR1 {layout.preempt_notice_s} s before the limit ({lead_note}; "
              f"at least {DEFAULT_PREEMPT_NOTICE_S} s, {LEAD_MARGIN:g}x the lead time, at most a quarter of the limit)",
              file=sys.stderr)
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
