"""Training checkpoints: actor, critic, optimizers, LR schedulers, RNG states, data position and
step, written atomically, checksummed, verified on resume and pruned to the last k.

Layout: CHECKPOINTS/step_000010/{rank_00000.pt, ..., trainer_state.json, CHECKSUMS.json, COMPLETE}.
Every rank writes its own shard into `step_000010.tmp`; after a barrier the driver writes the
trainer state, the ranks hash the directory's files (megarl.checkpoint.checksums, whatever files
the format wrote), the driver writes the manifest and then the COMPLETE marker, and renames the
directory into place. A run killed at any moment leaves either a complete checkpoint or a `.tmp`
directory that resume ignores (and removes). Resume takes the newest checkpoint whose files match
their checksums and load; one that does not is renamed `step_N.rejected` with a message saying
why. Pruning happens only after the new checkpoint is in place with every file at its recorded
size, so the newest good checkpoint is never deleted first. Weights with inf/nan are never saved.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megarl.checkpoint import checksums
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


class NoVerifiedCheckpointError(RuntimeError):
    """Checkpoints exist but none verifies; resuming would silently restart from step 0."""


class NonFiniteWeightsError(RuntimeError):
    """The model's weights hold inf/nan; nothing is saved (the last good checkpoint stays)."""


def _check_finite_weights(workers: dict, step: int) -> None:
    """Raise NonFiniteWeightsError on every rank when any rank's weights hold inf/nan."""
    bad = []
    device = None
    for name, worker in workers.items():
        for param in worker.model.parameters():
            device = param.device
            if not torch.isfinite(param.detach()).all():
                bad.append(name)
                break
    flag = collectives.all_reduce(torch.tensor([1.0 if bad else 0.0], device=device), op="max")
    if flag.item():
        raise NonFiniteWeightsError(
            f"{'/'.join(bad) or 'model'} weights hold inf/nan at step {step}: not writing a checkpoint (the newest "
            "good one is kept); lower the learning rate or check the data, then resume"
        )


def _say(message: str) -> None:
    print(f"megarl: {message}", file=sys.stderr, flush=True)


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def _complete(self) -> list[Path]:
        """Checkpoint directories with the COMPLETE marker, oldest first."""
        if not self.root.exists():
            return []
        found = [p for p in self.root.glob("step_*") if p.is_dir() and "." not in p.name and (p / "COMPLETE").exists()]
        return sorted(found, key=_step_of)

    def save(self, step: int, workers: dict, driver_state: dict, rank_state: dict | None = None) -> Path:
        """`rank_state`: this rank's part of a step stopped mid-way (see megarl.train.preemption)."""
        for name, worker in workers.items():
            if worker.settings.optim is not None and worker.settings.optim.distributed_optimizer:
                raise ValueError(
                    f"{name}.distributed_optimizer=true: checkpointing the distributed optimizer's sharded state "
                    "is not supported yet; set it to false or checkpoint.every=0"
                )
        _check_finite_weights(workers, step)
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
        digests = self._hash_in_parallel(tmp)
        if rank == 0:
            checksums.write_manifest(tmp, digests)
            (tmp / "COMPLETE").write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune_after(final)
        collectives.barrier()
        return final

    def _hash_in_parallel(self, directory: Path) -> dict:
        """SHA-256 of every file in `directory`, each rank hashing a share; the result on rank 0."""
        names = [checksums.files_to_hash(directory, exclude=("COMPLETE",)) if dist.get_rank() == 0 else None]
        collectives.broadcast_objects(names, src=0)
        mine = checksums.digest_files(directory, checksums.share_of(names[0], dist.get_rank(), dist.get_world_size()))
        parts = collectives.all_gather_objects(mine)
        return {name: digest for part in parts for name, digest in part.items()}

    def _prune_after(self, newest: Path) -> None:
        """Delete checkpoints beyond keep_last, only once `newest` is in place with every file at its
        recorded size (so the newest good checkpoint is never deleted before a newer one exists)."""
        try:
            checksums.check_sizes(newest, checksums.read_manifest(newest))
        except checksums.ManifestError as err:
            _say(f"checkpoint {newest.name} does not check out right after writing ({err}); keeping older checkpoints")
            return
        for old in self._complete()[: -self.keep_last]:
            if _step_of(old) < _step_of(newest):
                shutil.rmtree(old, ignore_errors=True)

    def _verify(self, path: Path) -> str | None:
        """Collective: None when every file of `path` matches its manifest, else the first problem."""
        manifest = [None]
        if dist.get_rank() == 0:
            try:
                manifest[0] = checksums.read_manifest(path)
            except checksums.ManifestError as err:
                manifest[0] = str(err)
        collectives.broadcast_objects(manifest, src=0)
        if isinstance(manifest[0], str):
            return manifest[0]
        names = checksums.share_of(sorted(manifest[0]), dist.get_rank(), dist.get_world_size())
        try:
            checksums.verify_files(path, manifest[0], names)
            problem = None
        except (checksums.ManifestError, OSError) as err:
            problem = str(err)
        return _first_problem(problem)

    def _reject(self, path: Path, why: str) -> None:
        """Rank 0: move a checkpoint that failed verification aside (kept for inspection) and say so."""
        if dist.get_rank() != 0:
            return
        target = path.with_name(path.name + ".rejected")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(path, target)
        _say(f"checkpoint {path.name} skipped: {why}; moved to {target.name}, trying an older one")

    def load_latest(self, workers: dict) -> dict | None:
        """Restore the newest checkpoint that verifies into `workers`; returns the driver state (with this
        rank's `rank_state`: its part of a step stopped mid-way) or None when there is none. Checkpoints
        that fail verification are skipped with a message."""
        rank = dist.get_rank()
        if rank == 0 and self.root.exists():
            for stale in self.root.glob("step_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        collectives.barrier()
        candidates = self._complete()
        skipped = []
        for path in reversed(candidates):
            problem = self._verify(path)
            shard = state = None
            if problem is None:
                try:
                    state = json.loads((path / "trainer_state.json").read_text())
                    shard = torch.load(path / f"rank_{rank:05d}.pt", map_location="cpu", weights_only=False)
                except Exception as err:  # noqa: BLE001 - any unreadable file means: try an older checkpoint
                    problem = f"cannot be read ({type(err).__name__}: {err})"
                problem = _first_problem(problem)
            if problem is not None:
                skipped.append(path.name)
                self._reject(path, problem)
                collectives.barrier()
                continue
            self._restore(path, state, shard, workers)
            return {**state, "rank_state": shard.get("step_progress")}
        if skipped:
            raise NoVerifiedCheckpointError(
                f"no checkpoint under {self.root} verifies (skipped {', '.join(skipped)}, now *.rejected); "
                "restore one or start a new run directory"
            )
        return None

    def _restore(self, path: Path, state: dict, shard: dict, workers: dict) -> None:
        if state["layout"] != _layout():
            raise ValueError(
                f"checkpoint {path} was written with layout {state['layout']}, this run has {_layout()}; "
                "resume with the same actor.tp/pp and number of processes (or start a new run directory)"
            )
        for name, worker in workers.items():
            if name not in shard:
                raise ValueError(f"checkpoint {path} has no {name!r} state; the recipe's algorithm changed since it was written")
            worker.model.load_state_dict(shard[name]["model"])
            worker.optimizer.load_state_dict(shard[name]["optimizer"])
            if worker.scheduler is not None and shard[name]["scheduler"] is not None:
                worker.scheduler.load_state_dict(shard[name]["scheduler"])
        _set_rng_state(shard["rng"])


def _first_problem(mine: str | None) -> str | None:
    """Collective: the first rank's problem (rank order), or None when no rank has one."""
    problems = collectives.all_gather_objects(mine)
    return next((f"rank {r}: {p}" if len(problems) > 1 else p for r, p in enumerate(problems) if p), None)


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
