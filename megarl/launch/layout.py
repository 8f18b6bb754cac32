"""Node layout of a Slurm training job, planned and validated from a recipe before anything is submitted.

A job is one allocation of `nodes` nodes split by node rank:

    split        nodes [0, T) run the trainer (torchrun, rendezvous on node 0), nodes [T, N) run
                 rollout servers; the servers' URLs reach the trainer as rollout.servers=[...]
    colocated    every node runs trainer ranks and its own rollout server(s) on the same GPUs
                 (SGLang with --enable-memory-saver); every server's URL goes to the trainer
    partitioned  (GPU, no rollout nodes, no colocation) every node splits its GPUs: the first ones
                 run trainer ranks, the last rollout.num_servers/nodes x server_tp run servers
    managed      (CPU only) the trainer starts its own built-in servers, as on a laptop

`plan_layout` checks that the counts fit together (TP x PP x DP against the trainer's GPUs, the
servers' TP against a node's GPUs, transports against where the servers run) and raises
`LaunchError` with a one-line message that names the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

from megarl.config import Config, SlurmConfig, colocated_transport_problem, critic_layout_problem
from megarl.model_configs.experts import check_expert_world, expert_data_parallel
from megarl.rollout.engines import default_engine, get_engine

# torchrun's rendezvous port is drawn from [MASTER_PORT_BASE, MASTER_PORT_BASE + MASTER_PORT_SPAN) by job
# id (slurm/env.sh), a range rollout server ports must stay out of.
MASTER_PORT_BASE, MASTER_PORT_SPAN = 20000, 10000
DEFAULT_PREEMPT_NOTICE_S = 600  # checkpoint lead time before the time limit, at least (one step + one checkpoint)
LEAD_MARGIN = 1.5  # the notice covers this many times the measured or estimated step + checkpoint time
_RECIPE_DEFAULTS = SlurmConfig()  # the recipe's slurm section owns the defaults of the options it holds


class LaunchError(ValueError):
    """The requested job cannot work; the message is one line naming the problem and the fix."""


@dataclasses.dataclass
class LaunchOptions:
    """What `megarl submit` was asked for: the recipe's slurm section with command-line flags over it
    (`from_recipe`). Options the slurm section holds take their defaults from `SlurmConfig`."""

    nodes: int = _RECIPE_DEFAULTS.nodes
    rollout_nodes: int = _RECIPE_DEFAULTS.rollout_nodes
    gpus_per_node: int = _RECIPE_DEFAULTS.gpus_per_node  # 0: a CPU cluster (gloo, built-in rollout servers)
    colocate: bool = False
    procs_per_node: int | None = None  # trainer processes per node; default: GPUs, or tp*pp on CPU
    servers_per_node: int | None = None  # default: gpus_per_node // rollout.server_tp, or 1 on CPU
    cpus_per_node: int | None = None  # CPUs to ask for per node (default: the whole node on GPU clusters)
    partition: str | None = _RECIPE_DEFAULTS.partition
    account: str | None = _RECIPE_DEFAULTS.account
    time: str = _RECIPE_DEFAULTS.time
    requeue: bool = False
    preempt_notice_s: int | None = None  # default: from lead_time_s (or DEFAULT_PREEMPT_NOTICE_S), at most a quarter of the limit
    lead_time_s: float | None = None  # measured or estimated seconds of one step plus one checkpoint
    server_port: int = 30000
    master_port: int | None = None  # default: MASTER_PORT_BASE + job id % MASTER_PORT_SPAN (below the server ports)
    mem: str | None = None  # #SBATCH --mem; default "0" (all of the node's memory) on GPU nodes
    health_timeout_s: int = 1800
    net_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    entry: tuple[str, ...] = ("megarl.cli", "train")  # module (or .py file) + leading args run on each rank
    job_name: str | None = None

    @classmethod
    def from_recipe(cls, slurm: SlurmConfig, **flags) -> "LaunchOptions":
        """The recipe's slurm section, with every flag that was given (not None) over it."""
        recipe = {f.name: getattr(slurm, f.name) for f in dataclasses.fields(cls) if f.name in SlurmConfig.model_fields}
        return cls(**{**recipe, **{name: value for name, value in flags.items() if value is not None}})


@dataclasses.dataclass(frozen=True)
class JobLayout:
    mode: Literal["split", "colocated", "partitioned", "managed"]
    nodes: int
    trainer_nodes: int
    rollout_nodes: int
    gpus_per_node: int
    nproc_per_node: int
    tp: int
    pp: int
    dp: int
    engine: str
    server_tp: int
    servers_per_node: int
    first_server_gpu: int
    time_limit_s: int
    preempt_notice_s: int
    ep: int  # expert parallelism (mixture-of-experts models): experts split over ep of a stage's tp x dp ranks

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_node > 0

    @property
    def world_size(self) -> int:
        return self.trainer_nodes * self.nproc_per_node

    @property
    def server_nodes(self) -> int:
        return {"split": self.rollout_nodes, "colocated": self.nodes, "partitioned": self.nodes, "managed": 0}[self.mode]

    @property
    def num_servers(self) -> int:
        return self.server_nodes * self.servers_per_node

    def describe(self) -> list[str]:
        """Human-readable lines explaining the layout (rendered into the sbatch script's header)."""
        unit = "GPU(s)" if self.on_gpu else "process(es)"
        lines = [
            f"{self.nodes} node(s), mode={self.mode}: "
            + {"split": f"{_span('node', 0, self.trainer_nodes)}: trainer; "
                        f"{_span('node', self.trainer_nodes, self.nodes)}: rollout servers",
               "colocated": "every node trains and serves rollouts on the same devices",
               "partitioned": f"every node: GPUs 0-{self.first_server_gpu - 1} trainer, "
                              f"GPUs {self.first_server_gpu}-{self.gpus_per_node - 1} rollout servers",
               "managed": "the trainer starts its own built-in rollout servers"}[self.mode],
            f"trainer: {self.trainer_nodes} node(s) x {self.nproc_per_node} {unit} = world {self.world_size} "
            f"= TP {self.tp} x PP {self.pp} x DP {self.dp}"
            + (f"; experts EP {self.ep} x expert DP {expert_data_parallel(self.tp, self.dp, self.ep)}" if self.ep > 1 else ""),
        ]
        if self.num_servers:
            where = "rollout node" if self.mode == "split" else "node"
            gpus = f" ({self.server_tp} GPU(s) each, TP {self.server_tp})" if self.on_gpu else ""
            lines.append(f"rollout: {self.servers_per_node} {self.engine} server(s) per {where}{gpus} "
                         f"= {self.num_servers} server(s)")
        return lines


def _span(word: str, start: int, stop: int) -> str:
    return f"{word} {start}" if stop - start == 1 else f"{word}s {start}-{stop - 1}"


_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def parse_slurm_time(text: str) -> int:
    """Seconds in a Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    m = _TIME.match(text.strip())
    if not m:
        raise LaunchError(f"--time={text!r} is not a Slurm time limit; use HH:MM:SS, D-HH:MM:SS or minutes (e.g. 24:00:00)")
    d, a, b, c = (int(m.group(k)) if m.group(k) is not None else None for k in "dabc")
    if d is not None:  # D-HH[:MM[:SS]]
        seconds = d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # minutes
        seconds = a * 60
    if seconds <= 0:
        raise LaunchError(f"--time={text!r} is zero; give a positive time limit (e.g. 24:00:00)")
    return seconds


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_layout(cfg: Config, opts: LaunchOptions) -> JobLayout:
    """Validate `opts` against the recipe and return the job's layout; raises LaunchError."""
    nodes, rollout_nodes, gpus = opts.nodes, opts.rollout_nodes, opts.gpus_per_node
    tp, pp = cfg.actor.tp, cfg.actor.pp
    rc = cfg.rollout
    if nodes < 1:
        raise LaunchError(f"--nodes={nodes}: a job needs at least 1 node")
    if rollout_nodes < 0:
        raise LaunchError(f"--rollout-nodes={rollout_nodes} is negative; use 0 (no rollout nodes) or more")
    if rollout_nodes >= nodes:
        raise LaunchError(
            f"--rollout-nodes={rollout_nodes} leaves no trainer node out of --nodes={nodes}; "
            f"use --nodes {rollout_nodes + 1} or fewer rollout nodes")
    if gpus < 0:
        raise LaunchError(f"--gpus-per-node={gpus} is negative; use 0 for a CPU cluster")
    colocate = opts.colocate or rc.colocate
    if colocate and rollout_nodes:
        raise LaunchError(
            f"colocated mode (--colocate or rollout.colocate=true) runs servers on the trainer nodes, but "
            f"--rollout-nodes={rollout_nodes}; drop --rollout-nodes or the colocation")
    if rc.servers and (rollout_nodes or colocate):
        raise LaunchError(
            f"rollout.servers={rc.servers} is set in the recipe, but megarl submit starts the servers itself; "
            "remove rollout.servers (or use --rollout-nodes 0 without --colocate to keep your own servers)")
    mode = "split" if rollout_nodes else ("colocated" if colocate else ("partitioned" if gpus and not rc.servers else "managed"))
    first_server_gpu = 0
    if mode == "partitioned":
        if rc.num_servers % nodes:
            raise LaunchError(
                f"rollout.num_servers={rc.num_servers} does not split evenly over --nodes={nodes} (each node keeps "
                "some GPUs for servers); use a multiple of the node count, rollout nodes, or --colocate")
        first_server_gpu = gpus - rc.num_servers // nodes * rc.server_tp
        if first_server_gpu < 1:
            raise LaunchError(
                f"rollout.num_servers={rc.num_servers} x server_tp={rc.server_tp} on {nodes} node(s) leaves no GPU for the "
                f"trainer out of --gpus-per-node={gpus}; use fewer servers, rollout nodes, or --colocate")
    if get_engine(rc.engine).needs_gpus and not gpus:
        raise LaunchError(f"rollout.engine={rc.engine} needs GPUs but --gpus-per-node=0; "
                          f"use rollout.engine={default_engine(False).name} on CPU clusters (or set --gpus-per-node)")
    if rc.transport == "tensor" and (mode == "split" or (mode in ("colocated", "partitioned") and nodes > 1)):
        where = "on rollout nodes" if mode == "split" else f"on all {nodes} nodes ({mode})"
        fix = ("disk (on a shared filesystem; distributed cannot share trainer rank 0's GPU)"
               if colocated_transport_problem("distributed", colocate=mode == "colocated", gpus=gpus > 0)
               else "distributed (or disk on a shared filesystem)")
        raise LaunchError(
            "rollout.transport=tensor passes shared-memory / CUDA-IPC handles, which work only with servers on the "
            f"trainer's node (rank 0 sends every weight), but the servers run {where}; set rollout.transport={fix}")
    problem = colocated_transport_problem(rc.transport, colocate=mode == "colocated", gpus=gpus > 0)
    if problem:
        raise LaunchError(problem)
    if rc.router and mode != "managed":
        raise LaunchError(
            "rollout.router=true: megarl submit passes every server to the trainer, whose rollout client balances "
            "requests over them itself (sglang-router runs only in front of SGLang servers the trainer starts); "
            "set rollout.router=false")
    trainer_nodes = nodes - rollout_nodes

    # ---- trainer processes ------------------------------------------------------------------
    if gpus:
        if opts.procs_per_node is not None and opts.procs_per_node != gpus:
            raise LaunchError(f"--procs-per-node={opts.procs_per_node} on GPU nodes must equal --gpus-per-node={gpus} "
                              "(one trainer rank per GPU)")
        nproc = first_server_gpu if mode == "partitioned" else gpus
        if mode == "partitioned" and (tp > nproc or nproc % tp):
            raise LaunchError(
                f"actor.tp={tp} must divide the {nproc} trainer GPUs per node left after the rollout servers; "
                f"choose actor.tp from {_divisors(nproc)} or change rollout.num_servers")
        if tp > gpus or gpus % tp:
            raise LaunchError(
                f"actor.tp={tp} must divide --gpus-per-node={gpus} so a tensor-parallel group stays inside one node; "
                f"choose actor.tp from {_divisors(gpus)}")
    else:
        nproc = opts.procs_per_node if opts.procs_per_node is not None else tp * pp
        if nproc < 1:
            raise LaunchError(f"--procs-per-node={nproc} must be at least 1")
    world = trainer_nodes * nproc
    if world % (tp * pp):
        unit = "GPUs" if gpus else "processes"
        raise LaunchError(
            f"{trainer_nodes} trainer node(s) x {nproc} {unit} = {world} ranks is not a multiple of "
            f"actor.tp*actor.pp = {tp}*{pp} = {tp * pp}; change the node count, actor.tp/pp"
            + ("" if gpus else " or --procs-per-node"))
    if problem := critic_layout_problem(cfg):
        raise LaunchError(problem)
    try:
        check_expert_world(cfg.actor.ep, tp, pp, world)
    except ValueError as err:
        raise LaunchError(str(err)) from None
    dp = world // (tp * pp)

    # ---- rollout servers ------------------------------------------------------------------
    server_tp = rc.server_tp
    if mode == "partitioned":
        per_node = rc.num_servers // nodes
    elif mode in ("split", "colocated"):
        if gpus:
            if server_tp > gpus or gpus % server_tp:
                raise LaunchError(
                    f"rollout.server_tp={server_tp} must divide --gpus-per-node={gpus} (one server never spans nodes); "
                    f"choose rollout.server_tp from {_divisors(gpus)}")
            per_node = gpus // server_tp
            if opts.servers_per_node is not None:
                if opts.servers_per_node * server_tp > gpus or opts.servers_per_node < 1:
                    raise LaunchError(
                        f"--servers-per-node={opts.servers_per_node} x rollout.server_tp={server_tp} GPUs does not fit "
                        f"in --gpus-per-node={gpus}; use at most {per_node}")
                per_node = opts.servers_per_node
        else:
            per_node = opts.servers_per_node or 1
            if per_node < 1:
                raise LaunchError(f"--servers-per-node={per_node} must be at least 1")
    else:
        per_node = 0

    # ---- time limit and preemption notice ---------------------------------------------------
    limit = parse_slurm_time(opts.time)
    notice = opts.preempt_notice_s
    if notice is None:
        wanted = max(DEFAULT_PREEMPT_NOTICE_S, math.ceil(LEAD_MARGIN * (opts.lead_time_s or 0)))
        notice = min(wanted, max(limit // 4, 10))
    if not 0 < notice < limit:
        raise LaunchError(
            f"--preempt-notice={notice}s must be positive and shorter than the time limit {opts.time} ({limit}s); "
            "it is how long before the limit the trainer is told to checkpoint")
    if notice > 65535:
        raise LaunchError(f"--preempt-notice={notice}s exceeds Slurm's maximum of 65535 s")
    if opts.requeue and not cfg.run.resume:
        raise LaunchError("--requeue needs run.resume=true: a requeued job must resume from its last checkpoint")
    return JobLayout(
        mode=mode, nodes=nodes, trainer_nodes=trainer_nodes, rollout_nodes=rollout_nodes, gpus_per_node=gpus,
        nproc_per_node=nproc, tp=tp, pp=pp, dp=dp, engine=rc.engine, server_tp=server_tp, servers_per_node=per_node,
        first_server_gpu=first_server_gpu,
        time_limit_s=limit, preempt_notice_s=notice, ep=cfg.actor.ep,
    )


def layout_warnings(cfg: Config, layout: JobLayout, opts: LaunchOptions) -> list[str]:
    """Things that work but are probably not what the user wants (printed, not fatal)."""
    warnings = []
    if opts.lead_time_s and layout.preempt_notice_s < opts.lead_time_s and opts.preempt_notice_s is None:
        warnings.append(f"one step plus a checkpoint takes about {opts.lead_time_s:.0f} s, longer than the {layout.preempt_notice_s} s "
                        "notice (a quarter of the time limit): a job at its limit may be killed before its checkpoint; "
                        "give a longer --time")
    if opts.requeue and not cfg.checkpoint.every:
        warnings.append("checkpoint.every=0: a requeue after a node failure (no signal) restarts from step 0; "
                        "set checkpoint.every to bound the lost work")
    if layout.on_gpu and layout.dp > 1 and cfg.data.prompts_per_step * cfg.rollout.n < layout.dp:
        warnings.append(f"{cfg.data.prompts_per_step * cfg.rollout.n} sequences per step for DP={layout.dp}: "
                        "some data-parallel ranks get no data")
    return warnings
