"""The rollout engines by name: what `rollout.engine` may be and everything megarl does differently per engine.

Every place that used to test the engine's name (the config and launcher checks, the memory
estimate, the trainer's weight pusher, the fleet, the Slurm node manager, `megarl eval`) reads
the engine's entry instead, so adding an engine is one `Engine` in `ENGINES`.

Imports nothing but the standard library and the command builders (`megarl.rollout.commands`),
so the config lists the names without loading torch. `megarl.rollout.fleet` starts servers of any
engine from these entries.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from megarl.rollout.commands import ServerLaunch, builtin_server_command, sglang_server_command, sglang_spec


@dataclass(frozen=True)
class Engine:
    """What megarl needs to know to run one kind of rollout server."""

    name: str
    summary: str
    needs_gpus: bool  # runs only on GPUs (the config and `megarl submit` refuse it on CPU)
    tensor_parallel: bool  # honours rollout.server_tp (else every server is TP 1)
    memory_pool: bool  # takes rollout.mem_fraction_static of its GPUs for weights + KV cache at start
    sglang_serializer: bool  # tensor-transport payloads are written with SGLang's own serializer
    token_from_file: bool  # admin token from a 0600 --config file (else $MEGARL_SERVE_TOKEN in its environment)
    cpu_threads: bool  # computes on the CPU threads it is given: OMP_NUM_THREADS per server, cores split with the trainer
    router: bool  # sglang-router can spread /generate over several servers
    placeholder_weights: bool  # can start from config + tokenizer alone (random weights) and take the actor's by push
    health_timeout_s: float  # how long a starting server may take to answer /health
    token_note: str  # how its servers receive the admin token, for the launch plan's header
    command: Callable[[ServerLaunch, str], list[str]]  # (launch, python) -> argv

    def server_tp(self, tp: int) -> int:
        """The tensor-parallel size a server of this engine runs with for rollout.server_tp=`tp`."""
        return tp if self.tensor_parallel else 1


def _sglang_command(launch: ServerLaunch, python: str) -> list[str]:
    return sglang_server_command(sglang_spec(launch), python=python, admin_key_config=launch.token_file)


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("builtin", "megarl's own server (megarl serve): an HF model in torch, CPU or one GPU", needs_gpus=False,
           tensor_parallel=False, memory_pool=False, sglang_serializer=False, token_from_file=False, cpu_threads=True,
           router=False, placeholder_weights=False, health_timeout_s=180.0, command=builtin_server_command,  # loads a small model on CPU
           token_note="built-in servers read the admin token from $MEGARL_SERVE_TOKEN"),
    Engine("sglang", "SGLang (python -m sglang.launch_server) on GPUs", needs_gpus=True, tensor_parallel=True,
           memory_pool=True, sglang_serializer=True, token_from_file=True, cpu_threads=False, router=True,
           placeholder_weights=True,  # --load-format dummy
           health_timeout_s=900.0, command=_sglang_command,  # loads a large model and captures CUDA graphs
           token_note="SGLang reads the admin key from a 0600 --config file that the node manager writes and removes on exit"),
)}
ENGINE_NAMES = tuple(ENGINES)


def get_engine(name: str) -> Engine:
    """The engine called `name`; a one-line error naming the known ones otherwise."""
    if name not in ENGINES:
        close = difflib.get_close_matches(name, ENGINE_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"rollout engine {name!r} is unknown; {hint}choose one of: {', '.join(ENGINE_NAMES)}")
    return ENGINES[name]


def default_engine(gpus: bool) -> Engine:
    """The engine used when none is named: the first that needs GPUs on a GPU machine, else the first that does not."""
    return next(e for e in ENGINES.values() if e.needs_gpus == gpus)
