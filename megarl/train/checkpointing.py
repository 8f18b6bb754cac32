"""Training checkpoints: actor, critic, optimizers, LR schedulers, RNG states, data position and
step, written atomically and pruned to the last k.

Layout: CHECKPOINTS/step_000010/{rank_00000.pt, ..., trainer_state.json, COMPLETE}. Every rank
writes its own shard into `step_000010.tmp`; after a barrier the driver writes the trainer state
and the COMPLETE marker, then renames the directory into place. A run killed at any moment
leaves either a complete checkpoint or a `.tmp` directory that resume ignores (and removes).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megarl.runtime import collectives

FORMAT_VERSION = 1


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    from megarl.runtime.device import on_gpu

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "megatron_tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if on_gpu():
        state["device"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    from megarl.runtime.device import on_gpu

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron_tracker"])
    if on_gpu() and "device" in state:
        torch.cuda.set_rng_state(state["device"])


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {
        "world_size": dist.get_world_size(),
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
    }


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def _complete(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.glob("step_*") if p.is_dir() and (p / "COMPLETE").exists() and not p.name.endswith(".tmp"))

    def save(self, step: int, workers: dict, driver_state: dict, rank_state: dict | None = None) -> Path:
        """`rank_state`: this rank's part of a step stopped mid-way (see megarl.train.preemption)."""
        for name, worker in workers.items():
            if worker.settings.optim is not None and worker.settings.optim.distributed_optimizer:
                raise ValueError(
                    f"{name}.distributed_optimizer=true: checkpointing the distributed optimizer's sharded state "
                    "is not supported yet; set it to false or checkpoint.every=0"
                )
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f"step_{step:06d}.tmp"
        rank = dist.get_rank()
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        collectives.barrier()
        shard = {"format": FORMAT_VERSION, "layout": _layout(), "rng": _rng_state(), "step_progress": rank_state}
        for name, worker in workers.items():
            shard[name] = {
                "model": {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in worker.model.state_dict().items()},
                "optimizer": worker.optimizer.state_dict(),
                "scheduler": worker.scheduler.state_dict() if worker.scheduler is not None else None,
            }
        path = tmp / f"rank_{rank:05d}.pt"
        torch.save(shard, path.with_suffix(".partial"))
        os.replace(path.with_suffix(".partial"), path)
        collectives.barrier()
        if rank == 0:
            (tmp / "trainer_state.json").write_text(json.dumps({**driver_state, "layout": _layout()}))
            (tmp / "COMPLETE").write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self._complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        collectives.barrier()
        return final

    def load_latest(self, workers: dict) -> dict | None:
        """Restore the newest complete checkpoint into `workers`; returns the driver state (with this
        rank's `rank_state`) or None."""
        rank = dist.get_rank()
        if rank == 0 and self.root.exists():
            for stale in self.root.glob("step_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        collectives.barrier()
        found = self._complete()
        if not found:
            return None
        path = found[-1]
        state = json.loads((path / "trainer_state.json").read_text())
        if state["layout"] != _layout():
            raise ValueError(
                f"checkpoint {path} was written with layout {state['layout']}, this run has {_layout()}; "
                "resume with the same actor.tp/pp and number of processes (or start a new run directory)"
            )
        shard = torch.load(path / f"rank_{rank:05d}.pt", map_location="cpu", weights_only=False)
        for name, worker in workers.items():
            if name not in shard:
                raise ValueError(f"checkpoint {path} has no {name!r} state; the recipe's algorithm changed since it was written")
            worker.model.load_state_dict(shard[name]["model"])
            worker.optimizer.load_state_dict(shard[name]["optimizer"])
            if worker.scheduler is not None and shard[name]["scheduler"] is not None:
                worker.scheduler.load_state_dict(shard[name]["scheduler"])
        _set_rng_state(shard["rng"])
        return {**state, "rank_state": shard.get("step_progress")}


def export_hf(actor_module, out_dir: Path, hf_assets_dir: Path, is_driver: bool) -> None:
    """Write the actor as a standard HF directory (what `megarl eval` and SGLang load), through the
    conversion tools: a Megatron checkpoint of the live model, then Megatron -> HF (every rank calls)."""
    from megarl.checkpoint.convert import megatron_to_hf
    from megarl.checkpoint.live import save_megatron_checkpoint

    megatron_dir = out_dir.with_name(out_dir.name + ".megatron")
    if is_driver and megatron_dir.exists():
        shutil.rmtree(megatron_dir)
    collectives.barrier()
    save_megatron_checkpoint(actor_module, megatron_dir, hf_assets_dir=hf_assets_dir)
    if is_driver:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        megatron_to_hf(megatron_dir, out_dir, progress=False)
        shutil.rmtree(megatron_dir)
    collectives.barrier()
