"""Launch SGLang rollout servers (and sglang-router) on GPU clusters.

`sglang_server_command` builds `python -m sglang.launch_server ...` for one server (one node,
or one TP group); `sglang_router_command` builds `python -m sglang_router.launch_router` over
the servers' URLs. `SGLangFleet` starts them, waits for each `/health`, and stops them
(SIGTERM to the process group, then SIGKILL). Running servers needs CUDA GPUs and the
`sglang` package; building commands does not, so the commands are unit-tested on CPU.

Admin token: SGLang reads `admin_api_key` from the command line or from a `--config` YAML
file. megarl never puts the token on a command line (any local user can read it there):
`SGLangFleet` writes it into a 0600 YAML file in a private temporary directory, passes
`--config FILE`, and deletes the directory once the servers have started (they parse it at
startup). See docs/security.md for what SGLang itself still exposes.

Example (two servers of TP=4 on one 8-GPU node, colocated with training):
    specs = [SGLangServerSpec(model_path="/ckpt/hf", tp_size=4, port=30000 + i, base_gpu_id=4 * i,
                              enable_memory_saver=True, mem_fraction_static=0.5, admin_token=token)
             for i in range(2)]
    with SGLangFleet(specs, router_port=30100) as fleet:
        client = RolloutClient(fleet.generation_urls)     # the router when there is one
        push_weights(weights, fleet.server_urls, transport="tensor", token=token, server_tp_size=4)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


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
    `admin_key_config`, the 0600 YAML file holding it (see `sglang_admin_key_config`)."""
    spec.validate()
    if spec.admin_token and not admin_key_config:
        raise ValueError("the admin token never goes on a command line: write it with "
                         "megarl.rollout.admin_token.sglang_admin_key_config and pass admin_key_config=FILE")
    cmd = [python, "-m", "sglang.launch_server", "--model-path", spec.model_path, "--host", spec.host,
           "--port", str(spec.port), "--tp-size", str(spec.tp_size)]
    if spec.mem_fraction_static is not None:
        cmd += ["--mem-fraction-static", str(spec.mem_fraction_static)]
    if spec.enable_memory_saver:
        cmd += ["--enable-memory-saver"]
    if spec.deterministic:
        cmd += ["--enable-deterministic-inference"]
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


def wait_for_health(url: str, timeout_s: float = 900.0, process: subprocess.Popen | None = None,
                    poll_s: float = 2.0) -> None:
    """Poll `url/health` until HTTP 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: server process exited with code {process.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer 200 within {timeout_s:.0f} s")
        time.sleep(poll_s)


class SGLangFleet:
    """Start SGLang servers (and a router when there is more than one), wait for health, stop them."""

    def __init__(self, specs: list[SGLangServerSpec], *, router_port: int | None = None, router_policy: str = "cache_aware",
                 health_timeout_s: float = 900.0, log_dir: str | None = None, env: dict[str, str] | None = None):
        if not specs:
            raise ValueError("SGLangFleet needs at least one server spec")
        self.specs = specs
        self.router_port = router_port
        self.router_policy = router_policy
        self.health_timeout_s = health_timeout_s
        self.log_dir = log_dir
        self.env = dict(os.environ, **(env or {}))
        self.processes: list[subprocess.Popen] = []
        self.router: subprocess.Popen | None = None
        self.key_dir: str | None = None  # private directory of the admin-key files, until the servers started
        tokens = {s.admin_token for s in specs if s.admin_token}
        if len(tokens) > 1:
            raise ValueError("SGLangFleet: every server of a fleet takes the same admin token")

    @property
    def admin_token(self) -> str | None:
        """The servers' admin token (weight sync sends it as 'Authorization: Bearer ...')."""
        return next((s.admin_token for s in self.specs if s.admin_token), None)

    @property
    def server_urls(self) -> list[str]:
        """One URL per server (node rank 0 of each): weight sync talks to each directly."""
        return [s.url for s in self.specs if s.node_rank == 0]

    @property
    def router_url(self) -> str | None:
        return f"http://127.0.0.1:{self.router_port}" if self.router is not None else None

    @property
    def generation_urls(self) -> list[str]:
        return [self.router_url] if self.router is not None else self.server_urls

    def server_commands(self, admin_key_config: str | None) -> list[list[str]]:
        """The argv of every server (`admin_key_config`: the 0600 file holding the fleet's admin token)."""
        return [sglang_server_command(spec, admin_key_config=admin_key_config) for spec in self.specs]

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        out = None
        if self.log_dir:  # owner-only: SGLang logs its server_args, admin key included
            os.makedirs(self.log_dir, exist_ok=True)
            out = os.fdopen(os.open(os.path.join(self.log_dir, f"{name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                    0o600), "ab")
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=self.env,
                                start_new_session=True)

    def start(self) -> "SGLangFleet":
        from megarl.runtime.device import on_gpu

        if not on_gpu():
            raise RuntimeError("SGLang servers need CUDA GPUs; on CPU use megarl's built-in server (megarl serve)")
        from megarl.rollout.admin_token import sglang_admin_key_config

        try:
            key_config = None
            if self.admin_token:
                self.key_dir = tempfile.mkdtemp(prefix="megarl-sglang-key-")  # mode 0700
                key_config = str(sglang_admin_key_config(self.admin_token, self.key_dir))
            for i, (spec, cmd) in enumerate(zip(self.specs, self.server_commands(key_config))):
                self.processes.append(self._spawn(cmd, f"sglang_{i}_node{spec.node_rank}"))
            for spec, process in zip(self.specs, self.processes):
                if spec.node_rank == 0:
                    wait_for_health(spec.url, self.health_timeout_s, process)
            self._remove_key_files()  # every server has read its arguments
            if len(self.server_urls) > 1 and self.router_port is not None:
                self.router = self._spawn(sglang_router_command(self.server_urls, port=self.router_port,
                                                                policy=self.router_policy), "sglang_router")
                wait_for_health(self.router_url, 120.0, self.router)
        except BaseException:
            self.stop()
            raise
        return self

    def _remove_key_files(self) -> None:
        if self.key_dir:
            shutil.rmtree(self.key_dir, ignore_errors=True)
            self.key_dir = None

    def stop(self, grace_s: float = 30.0) -> None:
        self._remove_key_files()
        for process in ([self.router] if self.router else []) + self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in ([self.router] if self.router else []) + self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes, self.router = [], None

    def __enter__(self) -> "SGLangFleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
