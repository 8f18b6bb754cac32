"""Rollout server command lines: what starts one server of each engine (no process is started here).

- `ServerLaunch`: one server to start, whatever its engine; each engine's entry in
  `megarl.rollout.engines` turns it into an argv with one of the builders below.
- `builtin_server_command`: megarl's built-in server (`megarl serve`).
- `sglang_server_command`: `python -m sglang.launch_server` (flags named as SGLang's ServerArgs),
  from an `SGLangServerSpec` (`sglang_spec(launch)` for a launch).
- `sglang_router_command`: `python -m sglang_router.launch_router` in front of several servers.

Imports nothing but the standard library: `megarl submit` renders these on a login node.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from megarl.rollout.protocol import MAX_BATCH_SEQUENCES


@dataclass(frozen=True)
class ServerLaunch:
    """One rollout server to start, whatever its engine (each engine's `command` turns it into an argv)."""

    model: str  # HF model directory
    port: int
    host: str = "127.0.0.1"
    seed: int = 0
    dtype: str | None = None  # a model.dtype name (fp32, bf16, fp16); None: the engine's default
    tp: int = 1  # tensor-parallel size (engines without tensor parallelism serve with 1)
    first_gpu: int = 0  # the server's GPUs are [first_gpu, first_gpu + tp)
    colocate: bool = False  # shares its GPUs with training (frees its memory while the trainer computes)
    mem_fraction_static: float | None = None  # colocated: its share of each GPU
    max_batch_sequences: int = MAX_BATCH_SEQUENCES
    token_file: str | None = None  # the 0600 file with the admin token, for engines that read it from a file
    return_routed_experts: bool = False  # MoE: the server returns each token's routed experts (routing replay)
    placeholder_weights: bool = False  # `model` holds config and tokenizer only (a torch_dist source): the server
    # starts with random weights and the trainer pushes the actor's before the first rollout


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # model.dtype -> the servers' --dtype


def server_dtype(dtype: str | None) -> str | None:
    """The servers' --dtype for a model.dtype name (None: the server's own default)."""
    if dtype is None:
        return None
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r} is not a model.dtype; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


def builtin_server_command(launch: ServerLaunch, python: str = sys.executable) -> list[str]:
    """The argv of one built-in server (`megarl serve`); its admin token comes from $MEGARL_SERVE_TOKEN."""
    cmd = [python, "-m", "megarl.cli", "serve", "--model", str(launch.model), "--host", launch.host,
           "--port", str(launch.port), "--seed", str(launch.seed)]
    if launch.max_batch_sequences != MAX_BATCH_SEQUENCES:  # the server's own default otherwise
        cmd += ["--max-batch-sequences", str(launch.max_batch_sequences)]
    dtype = server_dtype(launch.dtype)
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


def sglang_spec(launch: ServerLaunch) -> SGLangServerSpec:
    """The SGLang server of `launch` (its admin token goes in launch.token_file, not in the spec)."""
    return SGLangServerSpec(model_path=str(launch.model), host=launch.host, port=launch.port, tp_size=launch.tp,
                            base_gpu_id=launch.first_gpu, enable_memory_saver=launch.colocate,
                            mem_fraction_static=launch.mem_fraction_static if launch.colocate else None,
                            random_seed=launch.seed, dtype=server_dtype(launch.dtype),
                            return_routed_experts=launch.return_routed_experts,
                            extra_args=["--load-format", "dummy"] if launch.placeholder_weights else [])


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


