"""Run one node's rollout servers in a megarl Slurm job (started by slurm/node_role.sh).

    python -m megarl.launch.node_servers --plan RUN/launch.json --node-index K --log-dir DIR

Reads the job's launch plan (written by `megarl submit`), builds this node's server commands
(SGLang's `sglang.launch_server` on GPUs, megarl's built-in `megarl serve` on CPU), starts each
with its own log file, and keeps running while at least one of them is alive: a server that
dies is logged, not fatal, because the trainer's rollout client fails over to the remaining
servers. SIGTERM/SIGINT stop all of them (SIGTERM to each process group, SIGKILL after 30 s).
The admin token for weight updates comes from $MEGARL_SERVE_TOKEN and never goes on a command
line: built-in servers inherit the variable; SGLang servers get `--config FILE`, a 0600 YAML file
with `admin_api_key` in a private temporary directory that is removed when this manager exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from megarl.rollout.admin_token import TOKEN_ENV, sglang_admin_key_file
from megarl.rollout.commands import ServerLaunch
from megarl.rollout.engines import get_engine
from megarl.rollout.fleet import spawn_server, stop_servers
from megarl.rollout.protocol import MAX_BATCH_SEQUENCES


@dataclasses.dataclass(frozen=True)
class ServerPlan:
    """The rollout-server part of a job's launch plan (the `servers` object of launch.json)."""

    engine: str  # builtin | sglang
    model: str  # HF model directory
    dtype: str  # fp32 | bf16 | fp16
    server_tp: int
    servers_per_node: int
    base_port: int
    colocate: bool
    seed: int
    first_gpu: int = 0  # partitioned nodes: the servers' GPUs start after the trainer's
    mem_fraction_static: float | None = None  # colocated SGLang: its share of each GPU (rollout.mem_fraction_static)
    max_batch_sequences: int = MAX_BATCH_SEQUENCES  # built-in servers (rollout.max_batch_sequences)
    placeholder_weights: bool = False  # `model` holds config and tokenizer only (a torch_dist source): SGLang starts
    # with random weights (--load-format dummy) and the trainer pushes the actor's before the first rollout


    def port(self, node_index: int, server_index: int) -> int:
        return self.base_port + node_index * self.servers_per_node + server_index


def server_commands(plan: ServerPlan, node_index: int, python: str,
                    admin_key_config: str | None) -> list[tuple[int, list[str]]]:
    """(port, argv) of every server on server node `node_index`. Built-in servers read the token
    from $MEGARL_SERVE_TOKEN; SGLang reads it from `admin_key_config` (`--config`, a 0600 YAML file)."""
    engine = get_engine(plan.engine)
    routes = _is_moe(plan.model)  # MoE: the servers return each token's experts (routing replay reads them)
    commands = []
    for i in range(plan.servers_per_node):
        port = plan.port(node_index, i)
        launch = ServerLaunch(plan.model, port, host="0.0.0.0", seed=plan.seed + node_index * plan.servers_per_node + i,
                              dtype=plan.dtype, tp=plan.server_tp, first_gpu=plan.first_gpu + i * plan.server_tp,
                              colocate=plan.colocate, mem_fraction_static=plan.mem_fraction_static,
                              max_batch_sequences=plan.max_batch_sequences, placeholder_weights=plan.placeholder_weights,
                              return_routed_experts=routes,
                              token_file=admin_key_config if engine.token_from_file else None)
        commands.append((port, engine.command(launch, python)))
    return commands


def _is_moe(model_dir: str) -> bool:
    """Whether the served model routes tokens to experts (its servers then return each token's experts);
    False without a config.json here (SGLang then refuses the model itself)."""
    from megarl.models.spec import ModelSpec

    return (Path(model_dir) / "config.json").is_file() and ModelSpec.from_hf(model_dir).is_moe


def load_plan(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


class NodeServers:
    def __init__(self, commands: list[tuple[int, list[str]]], log_dir: Path, node_name: str):
        self.commands, self.log_dir, self.node_name = commands, log_dir, node_name
        self.procs: list[subprocess.Popen] = []
        self.stopping = False

    def log(self, message: str) -> None:
        print(f"[megarl {time.strftime('%F %T')} {self.node_name}] {message}", flush=True)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i, (port, argv) in enumerate(self.commands):
            log_path = self.log_dir / f"server_{self.node_name}_{i}.log"
            proc = spawn_server(argv, log_path)
            self.procs.append(proc)
            self.log(f"server {i} (port {port}, pid {proc.pid}): {' '.join(argv)}; log {log_path}")

    def wait(self) -> int:
        """Block while any server runs; log each exit. 0 when stopped or all exited cleanly.
        If this process is orphaned (the node script was killed), it stops the servers and returns."""
        reported = set()
        parent = os.getppid()
        while True:
            if not self.stopping and os.getppid() != parent:
                self.log("the node script is gone; stopping the servers")
                self.stop()
            alive = 0
            for i, proc in enumerate(self.procs):
                code = proc.poll()
                if code is None:
                    alive += 1
                elif i not in reported:
                    reported.add(i)
                    if not self.stopping:
                        self.log(f"server {i} (pid {proc.pid}) exited with code {code}; "
                                 f"{sum(p.poll() is None for p in self.procs)} server(s) left on this node "
                                 "(the trainer fails over to the remaining servers)")
            if not alive:
                return 0 if self.stopping or all(p.returncode == 0 for p in self.procs) else 1
            time.sleep(1.0)

    def stop(self, grace_s: float = 30.0) -> None:
        self.stopping = True
        stop_servers(self.procs, grace_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megarl.launch.node_servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", required=True, help="the job's launch.json (written by megarl submit)")
    parser.add_argument("--node-index", type=int, required=True, help="this node's index among the server nodes")
    parser.add_argument("--node-name", default=os.environ.get("SLURMD_NODENAME", "node"))
    parser.add_argument("--log-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    plan = ServerPlan(**load_plan(args.plan)["servers"])
    token = os.environ.get(TOKEN_ENV) if get_engine(plan.engine).token_from_file else None  # the others inherit it
    with sglang_admin_key_file(token) as admin_key_config:  # removed when this manager exits
        commands = server_commands(plan, args.node_index, sys.executable, admin_key_config)
        servers = NodeServers(commands, args.log_dir, args.node_name)

        def on_signal(signum, frame):
            servers.log(f"{signal.Signals(signum).name}: stopping {len(servers.procs)} server(s)")
            servers.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        servers.start()
        return servers.wait()


if __name__ == "__main__":
    sys.exit(main())
