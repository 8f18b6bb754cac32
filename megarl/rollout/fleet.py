"""Rollout server fleet: build server commands, start servers, wait for /health, stop them.

One module for every place that runs rollout servers: the trainer and `megarl eval` / `megarl
data filter` (`start_builtin_servers`, `sglang_fleet`), and a Slurm job, whose per-node manager
(`megarl.launch.node_servers`) builds the same commands and starts and stops them with the same
process handling, and whose `megarl.launch.health` waits with `wait_for_servers`.

- Commands: `builtin_server_command` (megarl's built-in server, `megarl serve`, CPU),
  `sglang_server_command` (`python -m sglang.launch_server`, GPUs; flags named as SGLang's
  ServerArgs) and `sglang_router_command` (`python -m sglang_router.launch_router`).
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
    fleet = sglang_fleet("/ckpt/hf", count=2, tp=4, log_dir=run / "logs", colocate=True,
                         mem_fraction_static=0.5).start()
    client = RolloutClient(fleet.generation_urls)         # the router when there is one
    push_weights(weights, fleet.server_urls, transport="tensor", token=fleet.admin_token, server_tp_size=4)
    fleet.stop()
"""

from __future__ import annotations

import ctypes
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
from megarl.runtime.ports import free_port

BUILTIN_HEALTH_TIMEOUT_S = 180.0  # a built-in server loads a small model on CPU
SGLANG_HEALTH_TIMEOUT_S = 900.0  # SGLang loads a large model and captures CUDA graphs
ROUTER_HEALTH_TIMEOUT_S = 120.0


# ---- commands ---------------------------------------------------------------------------------
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # model.dtype -> the servers' --dtype


def server_dtype(dtype: str | None) -> str | None:
    """The servers' --dtype for a model.dtype name (None: the server's own default)."""
    if dtype is None:
        return None
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r} is not a model.dtype; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


def builtin_server_command(model: str | Path, port: int, *, host: str = "127.0.0.1", seed: int = 0,
                           dtype: str | None = None, python: str = sys.executable) -> list[str]:
    """The argv of one built-in server (`megarl serve`); its admin token comes from $MEGARL_SERVE_TOKEN."""
    cmd = [python, "-m", "megarl.cli", "serve", "--model", str(model), "--host", host, "--port", str(port),
           "--seed", str(seed)]
    return cmd + (["--dtype", dtype] if dtype else [])


@dataclass
class SGLangServerSpec:
    """One `sglang.launch_server` process (flags named as SGLang's ServerArgs fields)."""

    model_path: str
    port: int = 30000
    host: str = "127.0.0.1"
    tp_size: int = 1
    mem_fraction_static: float | None = None  # fraction of GPU memory for weights + KV cache
    enable_memory_saver: bool = False  # colocated mode: lets /release_memory_occupation free GPU memory
    deterministic: bool = False  # --enable-deterministic-inference (batch-invariant kernels)
    return_routed_experts: bool = False  # --enable-return-routed-experts (MoE routing replay)
    random_seed: int | None = None
    dtype: str | None = None  # e.g. "bfloat16"; None lets SGLang read the checkpoint
    base_gpu_id: int = 0
    nnodes: int = 1  # >1: one server spans nodes; start one process per node with node_rank
    node_rank: int = 0
    dist_init_addr: str | None = None  # "host:port" of node 0 when nnodes > 1
    admin_token: str | None = None  # SGLang's admin_api_key, passed in a 0600 --config file (never argv)
    weight_version: str | None = None
    skip_server_warmup: bool = False
    extra_args: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.tp_size < 1:
            raise ValueError(f"tp_size={self.tp_size} must be >= 1")
        if self.mem_fraction_static is not None and not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static={self.mem_fraction_static} must be in (0, 1), e.g. 0.7")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError(f"nnodes={self.nnodes} needs dist_init_addr='node0-host:port' so the nodes can meet")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank={self.node_rank} must be in [0, nnodes={self.nnodes})")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def sglang_server_command(spec: SGLangServerSpec, python: str = sys.executable,
                          admin_key_config: str | None = None) -> list[str]:
    """The argv that starts one SGLang server for `spec`. A spec with an admin token needs
    `admin_key_config`, the 0600 YAML file holding it (see `admin_token.sglang_admin_key_file`)."""
    spec.validate()
    if spec.admin_token and not admin_key_config:
        raise ValueError("the admin token never goes on a command line: write it with "
                         "megarl.rollout.admin_token.sglang_admin_key_file and pass admin_key_config=FILE")
    cmd = [python, "-m", "sglang.launch_server", "--model-path", spec.model_path, "--host", spec.host,
           "--port", str(spec.port), "--tp-size", str(spec.tp_size)]
    if spec.mem_fraction_static is not None:
        cmd += ["--mem-fraction-static", str(spec.mem_fraction_static)]
    if spec.enable_memory_saver:
        cmd += ["--enable-memory-saver"]
    if spec.deterministic:
        cmd += ["--enable-deterministic-inference"]
    if spec.return_routed_experts:
        cmd += ["--enable-return-routed-experts"]
    if spec.random_seed is not None:
        cmd += ["--random-seed", str(spec.random_seed)]
    if spec.dtype:
        cmd += ["--dtype", spec.dtype]
    if spec.base_gpu_id:
        cmd += ["--base-gpu-id", str(spec.base_gpu_id)]
    if spec.nnodes > 1:
        cmd += ["--nnodes", str(spec.nnodes), "--node-rank", str(spec.node_rank), "--dist-init-addr", spec.dist_init_addr]
    if admin_key_config:
        cmd += ["--config", str(admin_key_config)]
    if spec.weight_version:
        cmd += ["--weight-version", spec.weight_version]
    if spec.skip_server_warmup:
        cmd += ["--skip-server-warmup"]
    return cmd + list(spec.extra_args)


def sglang_router_command(worker_urls: list[str], *, port: int = 30100, host: str = "127.0.0.1",
                          policy: str = "cache_aware", python: str = sys.executable) -> list[str]:
    """The argv that starts sglang-router over `worker_urls` (generation traffic only)."""
    if not worker_urls:
        raise ValueError("the router needs at least one worker URL")
    policies = ("random", "round_robin", "cache_aware", "power_of_two")
    if policy not in policies:
        raise ValueError(f"router policy {policy!r} is unknown; choose one of {policies}")
    return [python, "-m", "sglang_router.launch_router", "--host", host, "--port", str(port),
            "--policy", policy, "--worker-urls", *worker_urls]


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


def wait_for_health(url: str, timeout_s: float = SGLANG_HEALTH_TIMEOUT_S, process: subprocess.Popen | None = None,
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
    """Rollout servers this process started (and their router): URLs, admin token, processes."""

    server_urls: list[str]  # one per server: weight sync and admin calls go to each directly
    admin_token: str | None
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path | None] = field(default_factory=list)
    router: subprocess.Popen | None = None
    router_url: str | None = None

    @property
    def generation_urls(self) -> list[str]:
        """Where /generate goes: the router when there is one, else every server."""
        return [self.router_url] if self.router is not None else list(self.server_urls)

    def stop(self, grace_s: float = 30.0) -> None:
        stop_servers(([self.router] if self.router else []) + self.processes, grace_s)
        self.processes, self.router, self.router_url = [], None, None

    def __enter__(self) -> "ServerFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def builtin_thread_split(num_servers: int, overlap: bool) -> tuple[int | None, int]:
    """CPU threads for (this trainer process, each built-in server) on one machine.

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


def start_builtin_servers(model_dir: str | Path, count: int, log_dir: Path, *, seed: int = 0,
                          timeout_s: float = BUILTIN_HEALTH_TIMEOUT_S, threads: int | None = None,
                          dtype: str | None = None) -> ServerFleet:
    """Start `count` built-in rollout servers on 127.0.0.1 and wait until each answers /health
    (`threads`: torch threads per server; default $MEGARL_SERVER_THREADS or 1; `dtype`: a
    model.dtype name, default the server's float32)."""
    token = new_token()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.environ.get("MEGARL_SERVER_THREADS", "1")),
               **{TOKEN_ENV: token})
    fleet = ServerFleet(server_urls=[], admin_token=token)
    try:
        for i in range(count):
            port = free_port()
            log = Path(log_dir) / f"rollout_server_{i}.log"
            argv = builtin_server_command(model_dir, port, seed=seed + i, dtype=server_dtype(dtype))
            fleet.processes.append(spawn_server(argv, log, env))
            fleet.server_urls.append(f"http://127.0.0.1:{port}")
            fleet.logs.append(log)
        deadline = time.monotonic() + timeout_s
        for url, process, log in zip(fleet.server_urls, fleet.processes, fleet.logs):
            wait_for_health(url, max(0.0, deadline - time.monotonic()), process, poll_s=0.3, log_path=log)
    except BaseException:
        fleet.stop()
        raise
    return fleet


class SGLangFleet(ServerFleet):
    """SGLang servers (and a router when there is more than one server and a router port), not
    yet started: `start()` launches them, waits for health and returns the fleet."""

    def __init__(self, specs: list[SGLangServerSpec], *, router_port: int | None = None, router_policy: str = "cache_aware",
                 health_timeout_s: float = SGLANG_HEALTH_TIMEOUT_S, log_dir: str | Path | None = None,
                 env: dict[str, str] | None = None):
        if not specs:
            raise ValueError("SGLangFleet needs at least one server spec")
        tokens = {s.admin_token for s in specs if s.admin_token}
        if len(tokens) > 1:
            raise ValueError("SGLangFleet: every server of a fleet takes the same admin token")
        super().__init__(server_urls=[s.url for s in specs if s.node_rank == 0], admin_token=next(iter(tokens), None))
        self.specs = specs
        self.router_port = router_port
        self.router_policy = router_policy
        self.health_timeout_s = health_timeout_s
        self.log_dir = Path(log_dir) if log_dir else None
        self.env = dict(os.environ, **(env or {}))

    def server_commands(self, admin_key_config: str | None) -> list[list[str]]:
        """The argv of every server (`admin_key_config`: the 0600 file holding the fleet's admin token)."""
        return [sglang_server_command(spec, admin_key_config=admin_key_config) for spec in self.specs]

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def start(self) -> "SGLangFleet":
        # Imported here, not at the top: the device check imports torch, which the Slurm pieces
        # that use this module (`megarl submit` on a login node, the health wait) do not need.
        from megarl.runtime.device import on_gpu

        if not on_gpu():
            raise RuntimeError("SGLang servers need CUDA GPUs; on CPU use megarl's built-in server (megarl serve)")
        try:
            with sglang_admin_key_file(self.admin_token) as key_config:  # removed once every server has read it
                for i, (spec, cmd) in enumerate(zip(self.specs, self.server_commands(key_config))):
                    log = self._log(f"sglang_{i}_node{spec.node_rank}")
                    self.processes.append(spawn_server(cmd, log, self.env))
                    self.logs.append(log)
                for spec, process, log in zip(self.specs, self.processes, self.logs):
                    if spec.node_rank == 0:
                        wait_for_health(spec.url, self.health_timeout_s, process, log_path=log)
            if len(self.server_urls) > 1 and self.router_port is not None:
                self.router_url = f"http://127.0.0.1:{self.router_port}"
                self.router = spawn_server(sglang_router_command(self.server_urls, port=self.router_port,
                                                                 policy=self.router_policy),
                                           self._log("sglang_router"), self.env)
                wait_for_health(self.router_url, ROUTER_HEALTH_TIMEOUT_S, self.router)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "SGLangFleet":
        return self.start()


def sglang_fleet(model_dir: str | Path, count: int, tp: int, log_dir: Path, *, colocate: bool = False,
                 router: bool = False, seed: int = 0, mem_fraction_static: float | None = None,
                 dtype: str | None = None, routed_experts: bool = False) -> SGLangFleet:
    """GPU clusters: `count` SGLang servers on this node (GPUs [i*tp, (i+1)*tp) each), optionally
    behind sglang-router, with a fresh admin token (`fleet.admin_token`, never on a command line).
    `mem_fraction_static` goes to colocated servers, which share their GPUs with training; `dtype`
    (a model.dtype name) to every server, else SGLang takes the checkpoint's.
    Returns the SGLangFleet, not yet started."""
    token = new_token()
    specs = [
        SGLangServerSpec(model_path=str(model_dir), port=free_port(), tp_size=tp, base_gpu_id=i * tp,
                         enable_memory_saver=colocate, random_seed=seed + i, admin_token=token,
                         mem_fraction_static=mem_fraction_static if colocate else None, dtype=server_dtype(dtype),
                         return_routed_experts=routed_experts)
        for i in range(count)
    ]
    return SGLangFleet(specs, router_port=free_port() if router and count > 1 else None, log_dir=log_dir)


def start_sglang_servers(model_dir: str | Path, count: int, tp: int, log_dir: Path, **options) -> SGLangFleet:
    """`sglang_fleet(...)` started: returns it once every server answers /health."""
    return sglang_fleet(model_dir, count, tp, log_dir, **options).start()


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
@dataclass
class RunServers:
    """The rollout servers a training run generates with: started here (`fleet`) or given in
    rollout.servers (started by the Slurm job or by hand, sharing its token)."""

    urls: list[str]  # every server: weight sync and admin calls
    generation_urls: list[str]  # /generate: the router when there is one
    token: str | None
    master_address: str  # where the servers connect back to for the distributed transport
    fleet: ServerFleet | None = None
    trainer_threads: int | None = None  # built-in servers sharing this machine: torch threads for the trainer

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()


def start_for_run(rc, model_dir: str | Path, log_dir: Path, seed: int, dtype: str, routed_experts: bool = False) -> RunServers:
    """The servers of a run with rollout section `rc` (megarl.config.RolloutConfig): rc.servers when
    given, else rc.num_servers built-in or SGLang servers started here with `seed`, serving in the
    trainer's `dtype` (model.dtype), as a Slurm job's servers do."""
    if rc.servers:
        return RunServers(list(rc.servers), list(rc.servers), os.environ.get(TOKEN_ENV),
                          os.environ.get("MASTER_ADDR", "127.0.0.1"))
    trainer_threads = None
    if rc.engine == "builtin":
        trainer_threads, server_threads = builtin_thread_split(rc.num_servers, rc.off_policy)
        fleet = start_builtin_servers(model_dir, rc.num_servers, log_dir, seed=seed, threads=server_threads, dtype=dtype)
    else:
        fleet = start_sglang_servers(model_dir, rc.num_servers, rc.server_tp, log_dir, colocate=rc.colocate, router=rc.router,
                                     seed=seed, mem_fraction_static=rc.mem_fraction_static, dtype=dtype,
                                     routed_experts=routed_experts)
    return RunServers(fleet.server_urls, fleet.generation_urls, fleet.admin_token, "127.0.0.1", fleet, trainer_threads)
