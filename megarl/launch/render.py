"""Render a training job's sbatch script (slurm/train.sbatch.j2) and the files it runs from.

A submitted run directory holds everything the job needs, so a requeued or resubmitted job runs
exactly what was submitted:

    RUN/submit.sbatch   the rendered script (what `megarl submit --dry-run` prints)
    RUN/recipe.yaml     the resolved recipe (overrides applied, run.output_dir absolute)
    RUN/launch.json     the node layout and the rollout-server plan (read by node_servers)
    RUN/slurm/          copies of slurm/env.sh and slurm/node_role.sh
    RUN/logs/           job_<id>.out per job, job_<id>/restart_<n>/ per node
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

from megarl import model_source
from megarl.config import Config
from megarl.launch.layout import JobLayout, LaunchError, LaunchOptions
from megarl.launch.node_servers import ServerPlan, server_commands
from megarl.rollout.engines import get_engine
from megarl.runtime.seeds import fold_seed

NODE_SCRIPTS = ("env.sh", "node_role.sh")
TRAIN_TEMPLATE = "train.sbatch.j2"


@dataclasses.dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    @property
    def sbatch_file(self) -> Path:
        return self.run_dir / "submit.sbatch"

    @property
    def recipe_file(self) -> Path:
        return self.run_dir / "recipe.yaml"

    @property
    def plan_file(self) -> Path:
        return self.run_dir / "launch.json"

    @property
    def slurm_dir(self) -> Path:
        return self.run_dir / "slurm"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def job_log(self, job_id: str | int) -> Path:
        return self.log_dir / f"job_{job_id}.out"


def slurm_source_dir() -> Path:
    """The project's slurm/ folder ($MEGARL_SLURM_DIR, else next to the megarl package)."""
    import megarl

    path = Path(os.environ.get("MEGARL_SLURM_DIR") or Path(megarl.__file__).resolve().parent.parent / "slurm")
    missing = [name for name in (*NODE_SCRIPTS, TRAIN_TEMPLATE) if not (path / name).is_file()]
    if missing:
        raise LaunchError(f"the Slurm scripts folder {path} lacks {', '.join(missing)}; "
                          "run from a megarl checkout or set MEGARL_SLURM_DIR to its slurm/ folder")
    return path


def resolve_model_dir(cfg: Config, build: bool = True) -> str:
    """The HF directory the rollout servers start from (megarl.model_source; a scheme's model made unless
    not `build`). For a torch_dist checkpoint that is its HF assets (config.json, tokenizer): the servers
    start with placeholder weights (`server_plan`) and the trainer pushes the actor's before the first rollout."""
    source = model_source.resolve(cfg.model.path, tokenizer=cfg.model.tokenizer, build=build)
    return str(source.hf_dir.resolve())


def server_plan(cfg: Config, layout: JobLayout, model_dir: str, base_port: int) -> ServerPlan | None:
    if not layout.num_servers:
        return None
    source = model_source.resolve(cfg.model.path, tokenizer=cfg.model.tokenizer, build=False)
    if not source.has_hf_weights and not get_engine(layout.engine).placeholder_weights:
        raise LaunchError(f"model.path={cfg.model.path} is a torch_dist checkpoint and rollout.engine={layout.engine} starts "
                          "from HF weights; use rollout.engine=sglang, or convert it to HF first (tools/convert_megatron_to_hf.py)")
    dtype = cfg.model.dtype if layout.on_gpu else "fp32"  # the built-in CPU server computes in fp32
    return ServerPlan(engine=layout.engine, model=model_dir, dtype=dtype, server_tp=layout.server_tp,
                      servers_per_node=layout.servers_per_node, base_port=base_port,
                      colocate=layout.mode == "colocated", seed=fold_seed(cfg.run.seed, 31),  # SGLang seeds NumPy with it
                      first_gpu=layout.first_server_gpu,
                      mem_fraction_static=cfg.rollout.mem_fraction_static, max_batch_sequences=cfg.rollout.max_batch_sequences,
                      placeholder_weights=not source.has_hf_weights)


def frozen_recipe(cfg: Config, run_dir: Path, layout: JobLayout | None = None) -> dict:
    """The recipe the job runs: overrides applied, absolute run.output_dir, rollout.colocate set
    when the layout shares GPUs between trainer and servers (the trainer then frees server memory)."""
    data = cfg.model_dump()
    data["run"]["output_dir"] = str(run_dir)
    if layout is not None and layout.mode == "colocated":
        data["rollout"]["colocate"] = True
    return data


def sbatch_directives(cfg: Config, layout: JobLayout, opts: LaunchOptions, paths: RunPaths,
                      submit_dir: Path, extra: list[str] = ()) -> list[str]:
    directives = [
        f"--job-name={opts.job_name or 'megarl-' + cfg.run.name}",
        f"--nodes={layout.nodes}",
        "--ntasks-per-node=1",
    ]
    if layout.on_gpu:
        directives.append(f"--gpus-per-node={layout.gpus_per_node}")
    if opts.cpus_per_node:
        directives.append(f"--cpus-per-task={opts.cpus_per_node}")
    elif layout.on_gpu:
        directives.append("--exclusive")
    mem = opts.mem if opts.mem is not None else ("0" if layout.on_gpu else None)
    if mem is not None:
        directives.append(f"--mem={mem}")  # 0: all of each node's memory (offloaded optimizer state, page cache)
    directives.append(f"--time={opts.time}")
    if opts.partition:
        directives.append(f"--partition={opts.partition}")
    if opts.account:
        directives.append(f"--account={opts.account}")
    directives += [
        f"--chdir={submit_dir}",
        f"--output={paths.log_dir}/job_%j.out",
        "--open-mode=append",
        f"--signal=B:USR1@{layout.preempt_notice_s}",
    ]
    if opts.requeue:
        directives.append("--requeue")
    directives += list(extra)
    for directive in directives:
        check_directive(directive)
    return directives


def check_directive(directive: str) -> None:
    """An #SBATCH option must be one line and an option: a newline would end the directive block
    and run the rest as a shell command in the job. Raises LaunchError."""
    bad = next((c for c in directive if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise LaunchError(f"sbatch option {directive!r} contains the control character {bad!r}; give each option as "
                          "its own --sbatch-arg (and names, partitions and times) on one line")
    if not directive.startswith("-"):
        raise LaunchError(f"sbatch option {directive!r} is not an option; write it as --name=value "
                          "(e.g. --sbatch-arg=--qos=high)")


def _server_lines(plan: ServerPlan | None, layout: JobLayout) -> list[str]:
    if plan is None:
        return []
    first_node = layout.trainer_nodes if layout.mode == "split" else 0  # colocated/partitioned: every node
    lines = []
    for k in range(layout.server_nodes):
        for port, argv in server_commands(plan, k, "$MEGARL_PYTHON", "<0600 admin-key file>"):
            lines.append(f"node {first_node + k}, port {port}: {' '.join(argv)}")
    if len(lines) > 12:  # keep the header readable: first node in full, then a summary
        per = layout.servers_per_node
        lines = lines[:per] + [f"... the same on nodes {first_node + 1}..{first_node + layout.server_nodes - 1}, "
                               f"ports {plan.base_port + per}..{plan.base_port + layout.num_servers - 1}"]
    lines.append(f"({get_engine(plan.engine).token_note})")
    return lines


def render_train_sbatch(cfg: Config, layout: JobLayout, opts: LaunchOptions, paths: RunPaths, *,
                        recipe_source: str, model_dir: str, submit_dir: Path, python: str = sys.executable,
                        venv: str | None = None, extra_directives: list[str] = ()) -> str:
    """The sbatch script for this layout, as text."""
    import jinja2

    env_vars = [("MEGARL_PYTHON", python)]
    if venv:
        env_vars.append(("MEGARL_VENV", venv))
    if cfg.slurm.setup.strip():
        env_vars.append(("MEGARL_SETUP", cfg.slurm.setup.strip()))
    if opts.net_ifname:
        env_vars.append(("MEGARL_NET_IFNAME", opts.net_ifname))
    srun_cpus = str(opts.cpus_per_node) if opts.cpus_per_node else ("$SLURM_CPUS_ON_NODE" if layout.on_gpu else "")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(slurm_source_dir())), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
    )
    environment.filters["q"] = lambda value: shlex.quote(str(value))
    template = environment.get_template(TRAIN_TEMPLATE)
    plan = server_plan(cfg, layout, model_dir, opts.server_port)
    return template.render(
        recipe_source=recipe_source, sbatch_file=str(paths.sbatch_file), run_dir=str(paths.run_dir),
        log_dir=str(paths.log_dir), slurm_dir=str(paths.slurm_dir), recipe_file=str(paths.recipe_file),
        layout=layout, layout_lines=layout.describe(), server_lines=_server_lines(plan, layout),
        directives=sbatch_directives(cfg, layout, opts, paths, submit_dir, list(extra_directives)),
        env=env_vars, base_port=opts.server_port, requeue=opts.requeue, srun_cpus=srun_cpus,
        health_timeout_s=opts.health_timeout_s, entry=shlex.join(opts.entry), master_port=opts.master_port,
    )


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_run_files(cfg: Config, layout: JobLayout, plan: ServerPlan | None, paths: RunPaths, script: str) -> None:
    """Write recipe.yaml, launch.json, slurm/ copies and submit.sbatch (each written, then renamed)."""
    source = slurm_source_dir()
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    for name in NODE_SCRIPTS:
        _write_atomic(paths.slurm_dir / name, (source / name).read_text(), 0o755)
    _write_atomic(paths.recipe_file, yaml.safe_dump(frozen_recipe(cfg, paths.run_dir, layout), sort_keys=False))
    launch = {"layout": dataclasses.asdict(layout), "servers": dataclasses.asdict(plan) if plan else None}
    _write_atomic(paths.plan_file, json.dumps(launch, indent=2) + "\n")
    _write_atomic(paths.sbatch_file, script, 0o755)
