"""Rollout server fleet: start servers of any engine, wait for /health, stop them.

One module for every place that runs rollout servers: the trainer (`start_for_run`), `megarl eval`
and `megarl data filter` (`start_servers`), and a Slurm job, whose per-node manager
(`megarl.launch.node_servers`) builds the same commands (each engine's `command` in
megarl.rollout.engines) and starts and stops them with the same process handling, and whose
`megarl.launch.health` waits with `wait_for_servers`.

- `ServerFleet`: the one description of a set of rollout servers (server URLs, the generation
  URL(s), admin token, engine, and the processes when this process started them).
- `FleetPlan` / `fleet_plan`: servers of one engine not yet started; `start()` returns the fleet.
- Processes: `spawn_server` starts one in its own process group with an owner-only log file, set
  to get SIGTERM if the process that started it dies; `stop_servers` sends SIGTERM to each group,
  then SIGKILL after a grace period.
- Health: `is_healthy` is the one `/health` probe; `wait_for_health` waits for one server (and
  fails early when its process exits); `wait_for_servers` polls many and returns those that answer.

Admin token (see megarl.rollout.admin_token and docs/security.md): every fleet started here gets
a fresh per-run token that never appears on a command line (any local user can read those).
Built-in servers read it from $MEGARL_SERVE_TOKEN in their environment; SGLang servers read
`--config FILE`, a 0600 YAML file in a private temporary directory that is deleted once the
servers have started (they parse it at startup).

Example (two SGLang servers of TP=4 on one 8-GPU node, colocated with training):
    fleet = start_servers("sglang", "/ckpt/hf", 2, run / "logs", tp=4, colocate=True, mem_fraction_static=0.5)
    client = RolloutClient(fleet.generation_urls)         # the router when there is one
    push_weights(weights, fleet.server_urls, transport="tensor", token=fleet.admin_token, server_tp_size=4)
    fleet.stop()
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from megarl.rollout.admin_token import TOKEN_ENV, new_token, sglang_admin_key_file
from megarl.rollout.commands import ServerLaunch, sglang_router_command
from megarl.rollout.engines import get_engine
from megarl.rollout.protocol import MAX_BATCH_SEQUENCES
from megarl.runtime.ports import free_port

ROUTER_HEALTH_TIMEOUT_S = 120.0


# ---- health -----------------------------------------------------------------------------------
def is_healthy(url: str, timeout_s: float = 5.0) -> bool:
    """True when `url`/health answers HTTP 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    try:
        return f"; see {log_path}:\n{log_path.read_text(errors='replace')[-2000:]}"
    except OSError:
        return f"; see {log_path}"


def wait_for_health(url: str, timeout_s: float, process: subprocess.Popen | None = None,
                    poll_s: float = 2.0, log_path: Path | None = None) -> None:
    """Poll `url`/health until HTTP 200; fail early (with the log's tail) if `process` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"rollout server {url} exited with code {process.returncode} before answering "
                               f"/health{_log_tail(log_path)}")
        if is_healthy(url):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer 200 within {timeout_s:.0f} s"
                               + (f"; see {log_path}" if log_path else ""))
        time.sleep(poll_s)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_servers(urls: list[str], timeout_s: float, poll_s: float = 2.0, watch_pid: int | None = None,
                     log: Callable[[str], None] = print) -> list[str]:
    """Poll until all `urls` are healthy, `timeout_s` passes or process `watch_pid` ends; returns the
    healthy URLs in the given order."""
    deadline = time.monotonic() + timeout_s
    healthy: set[str] = set()
    while True:
        for url in urls:
            if url not in healthy and is_healthy(url):
                healthy.add(url)
                log(f"rollout server {url} is healthy ({len(healthy)}/{len(urls)})")
        if len(healthy) == len(urls):
            break
        if not _alive(watch_pid):
            log(f"the rollout step (pid {watch_pid}) has ended")
            break
        if time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    return [u for u in urls if u in healthy]


# ---- processes --------------------------------------------------------------------------------
def _terminate_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the process that started it dies (even by SIGKILL).

    PR_SET_PDEATHSIG fires when the *thread* that forked the server exits: start servers from
    the main thread (or a thread that lives as long as they should)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn_server(argv: list[str], log_path: Path | None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start one server (or router) in its own process group, output appended to `log_path`
    (created owner-only: SGLang logs its server_args, admin key included; None: this process's output)."""
    if log_path is None:
        return subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_terminate_with_parent)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_terminate_with_parent)


def stop_servers(processes: list[subprocess.Popen], grace_s: float = 30.0) -> None:
    """SIGTERM each process group, then SIGKILL those still running after `grace_s` seconds."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


# ---- fleets -----------------------------------------------------------------------------------
@dataclass
class ServerFleet:
    """The rollout servers a process generates with: started here (`start_servers`, `FleetPlan.start`)
    or given by URL (rollout.servers: started by a Slurm job or by hand, sharing its admin token)."""

    server_urls: list[str]  # one per server: weight sync and admin calls go to each directly
    admin_token: str | None
    engine: str = "builtin"  # a name of megarl.rollout.engines
    master_address: str = "127.0.0.1"  # where the servers connect back to for the distributed transport
    processes: list[subprocess.Popen] = field(default_factory=list)  # those this process started
    logs: list[Path | None] = field(default_factory=list)
    router: subprocess.Popen | None = None
    router_url: str | None = None
    trainer_threads: int | None = None  # servers sharing this machine's cores: torch threads for the trainer

    @property
    def generation_urls(self) -> list[str]:
        """Where /generate goes: the router when there is one, else every server."""
        return [self.router_url] if self.router_url is not None else list(self.server_urls)

    def weight_sync_options(self, server_tp: int) -> dict:
        """The WeightPusher settings its engine needs for rollout.server_tp=`server_tp` (payloads per
        server TP rank, SGLang's serializer)."""
        engine = get_engine(self.engine)
        return {"server_tp_size": engine.server_tp(server_tp), "sglang_serializer": engine.sglang_serializer}

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop the servers (and router) this process started; servers given by URL are left running."""
        stop_servers(([self.router] if self.router else []) + self.processes, grace_s)
        self.processes, self.router, self.router_url = [], None, None

    def __enter__(self) -> "ServerFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def builtin_thread_split(num_servers: int, overlap: bool) -> tuple[int | None, int]:
    """CPU threads for (this trainer process, each server) of an engine that computes on CPU threads.

    On-policy (rollout.mode=sync) the trainer and the servers take turns: the trainer keeps torch's
    default and each server gets $MEGARL_SERVER_THREADS (default 1). Off-policy they compute at
    the same time, so the cores are split (half to the servers, the rest to the trainer) instead
    of oversubscribed, which on CPU costs more than the overlap gains. $OMP_NUM_THREADS (trainer)
    and $MEGARL_SERVER_THREADS (servers), when set, win.
    """
    server = os.environ.get("MEGARL_SERVER_THREADS")
    if not overlap:
        return None, int(server or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_server = int(server) if server else max(1, cores // (2 * num_servers))
    trainer = None if os.environ.get("OMP_NUM_THREADS") else max(1, cores - per_server * num_servers)
    return trainer, per_server


class FleetPlan:
    """Servers of one engine (and a router when the engine has one, there is more than one server and a
    router port), not yet started: `start()` launches them, waits for /health and returns the ServerFleet.

    The fleet's admin token (fresh unless given) never goes on a command line: engines that read it
    from a file get a 0600 --config file in a private directory, removed once every server has
    started; the others get $MEGARL_SERVE_TOKEN in their environment."""

    def __init__(self, engine: str, launches: list[ServerLaunch], *, log_dir: str | Path | None = None,
                 router_port: int | None = None, router_policy: str = "cache_aware", health_timeout_s: float | None = None,
                 threads: int | None = None, token: str | None = None, env: dict[str, str] | None = None):
        self.engine = get_engine(engine)
        if not launches:
            raise ValueError("a fleet needs at least one server")
        if router_port is not None and not self.engine.router:
            raise ValueError(f"{self.engine.name} servers run without a router; leave rollout.router unset")
        self.launches = launches
        self.admin_token = token or new_token()
        self.log_dir = Path(log_dir) if log_dir else None
        self.router_port, self.router_policy = router_port, router_policy
        self.health_timeout_s = self.engine.health_timeout_s if health_timeout_s is None else health_timeout_s
        self.env = dict(os.environ, **(env or {}))
        if not self.engine.token_from_file:
            self.env[TOKEN_ENV] = self.admin_token
        if self.engine.cpu_threads:
            self.env["OMP_NUM_THREADS"] = str(threads or os.environ.get("MEGARL_SERVER_THREADS", "1"))

    @property
    def server_urls(self) -> list[str]:
        return [f"http://{launch.host}:{launch.port}" for launch in self.launches]

    def server_commands(self, token_file: str | None) -> list[list[str]]:
        """The argv of every server (`token_file`: the 0600 file holding the admin token, for engines that read one)."""
        return [self.engine.command(dataclasses.replace(launch, token_file=token_file), sys.executable)
                for launch in self.launches]

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def start(self) -> ServerFleet:
        if self.engine.needs_gpus:
            # Imported here, not at the top: the device check imports torch, which the Slurm pieces
            # that use this module (`megarl submit` on a login node, the health wait) do not need.
            from megarl.runtime.device import on_gpu

            if not on_gpu():
                raise RuntimeError(f"{self.engine.name} servers need CUDA GPUs; on CPU use megarl's built-in server "
                                   "(megarl serve, rollout.engine=builtin)")
        fleet = ServerFleet(self.server_urls, self.admin_token, engine=self.engine.name)
        try:
            token_file = self.admin_token if self.engine.token_from_file else None
            with sglang_admin_key_file(token_file) as key_config:  # removed once every server has read it
                for i, cmd in enumerate(self.server_commands(key_config)):
                    log = self._log(f"rollout_server_{i}")
                    fleet.processes.append(spawn_server(cmd, log, self.env))
                    fleet.logs.append(log)
                deadline = time.monotonic() + self.health_timeout_s
                for url, process, log in zip(fleet.server_urls, fleet.processes, fleet.logs):
                    wait_for_health(url, max(0.0, deadline - time.monotonic()), process, poll_s=0.3, log_path=log)
            if len(fleet.server_urls) > 1 and self.router_port is not None:
                fleet.router_url = f"http://127.0.0.1:{self.router_port}"
                fleet.router = spawn_server(sglang_router_command(fleet.server_urls, port=self.router_port,
                                                                  policy=self.router_policy),
                                            self._log("router"), self.env)
                wait_for_health(fleet.router_url, ROUTER_HEALTH_TIMEOUT_S, fleet.router)
        except BaseException:
            fleet.stop()
            raise
        return fleet


def fleet_plan(engine: str, model_dir: str | Path, count: int, log_dir: Path | None, *, tp: int = 1, seed: int = 0,
               dtype: str | None = None, colocate: bool = False, router: bool = False,
               mem_fraction_static: float | None = None, max_batch_sequences: int = MAX_BATCH_SEQUENCES,
               threads: int | None = None, timeout_s: float | None = None, routed_experts: bool = False) -> FleetPlan:
    """`count` servers of `engine` on this node (GPUs [i*tp, (i+1)*tp) each with tensor parallelism), behind
    sglang-router when `router` and the engine has one; `dtype` is a model.dtype name (default: the engine's),
    `mem_fraction_static` goes to colocated servers (sharing their GPUs with training), `threads` to engines
    that compute on CPU threads (default $MEGARL_SERVER_THREADS or 1). Not yet started."""
    spec = get_engine(engine)
    tp = spec.server_tp(tp)
    launches = [ServerLaunch(str(model_dir), free_port(), seed=seed + i, dtype=dtype, tp=tp, first_gpu=i * tp,
                             colocate=colocate, mem_fraction_static=mem_fraction_static,
                             max_batch_sequences=max_batch_sequences, return_routed_experts=routed_experts)
                for i in range(count)]
    router_port = free_port() if router and spec.router and count > 1 else None
    return FleetPlan(engine, launches, log_dir=log_dir, router_port=router_port, health_timeout_s=timeout_s, threads=threads)


def start_servers(engine: str, model_dir: str | Path, count: int, log_dir: Path | None, **options) -> ServerFleet:
    """`fleet_plan(...)` started: returns the ServerFleet once every server answers /health."""
    return fleet_plan(engine, model_dir, count, log_dir, **options).start()


def post_to_servers(urls: list[str], path: str, body: dict | None = None, token: str | None = None,
                    timeout_s: float = 300.0) -> list[dict]:
    """POST the same JSON to every server (admin endpoints such as /release_memory_occupation)."""

    def post(url: str) -> dict:
        request = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode() or "{}"
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {"text": text}

    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        return list(pool.map(post, urls))


# ---- the trainer's servers ----------------------------------------------------------------------
def start_for_run(rc, model_dir: str | Path, log_dir: Path, seed: int, dtype: str, routed_experts: bool = False) -> ServerFleet:
    """The servers of a run with rollout section `rc` (megarl.config.RolloutConfig): rc.servers when
    given, else rc.num_servers servers of rc.engine started here with `seed`, serving in the
    trainer's `dtype` (model.dtype), as a Slurm job's servers do."""
    if rc.servers:
        return ServerFleet(list(rc.servers), os.environ.get(TOKEN_ENV), engine=rc.engine,
                           master_address=os.environ.get("MASTER_ADDR", "127.0.0.1"))
    engine = get_engine(rc.engine)
    trainer_threads, threads = builtin_thread_split(rc.num_servers, rc.off_policy) if engine.cpu_threads else (None, None)
    fleet = start_servers(engine.name, model_dir, rc.num_servers, log_dir, tp=rc.server_tp, seed=seed, dtype=dtype,
                          colocate=rc.colocate, router=rc.router, mem_fraction_static=rc.mem_fraction_static,
                          max_batch_sequences=rc.max_batch_sequences, threads=threads, routed_experts=routed_experts)
    fleet.trainer_threads = trainer_threads
    return fleet
