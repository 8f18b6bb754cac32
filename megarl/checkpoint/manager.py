"""A training run's checkpoints: resume checkpoints (CheckpointManager) and HF exports (export_hf).

A resume checkpoint holds actor, critic, optimizers (the distributed optimizer's sharded state
too), LR schedulers, RNG states, data position and step, written atomically, checksummed,
verified on resume, resharded to the resuming run's layout, and pruned to the last k.

Layout: CHECKPOINTS/step_000010/
    torch_dist/            models, optimizers, schedulers in Megatron's distributed checkpoint
                           format (megarl.checkpoint.torch_dist; Megatron reshards it on load, so a
                           run saved at TP2 x DP2 resumes at TP1 x PP2)
    rng/rank_00000.pt ...  each rank's RNG states (restored when the layout is unchanged)
    progress/rank_00000.pt ...  a step stopped between phases: each rank's part of its progress
                           (megarl.train.preemption; resumable at the same layout only)
    trainer_state.json     step, prompt stream position, prefetched batch, layout
    CHECKSUMS.json, COMPLETE
Every rank writes into `step_000010.tmp`; after a barrier the driver writes the trainer state, the
ranks hash the directory's files (megarl.checkpoint.checksums, whatever files the format wrote),
the driver writes the manifest and then the COMPLETE marker, and renames the directory into place.
A run killed at any moment leaves either a complete checkpoint or a `.tmp` directory that resume
ignores (and removes). Resume takes the newest checkpoint whose files match their checksums and
load; one that does not is renamed `step_N.rejected` with a message saying why. Pruning happens
only after the new checkpoint is in place with every file at its recorded size, so the newest good
checkpoint is never deleted first. Weights with inf/nan are never saved.

With `async_save`, megatron-core's asynchronous writer stores the tensors in the background
(`dist_checkpointing.save(async_sharded_save=True)` + `AsyncCallsQueue`) while training goes on;
the manifest, COMPLETE marker, rename and pruning run when it is finalized: at the next save,
at `wait()` (the trainer calls it before exiting) or when a later step finds it done.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from megarl.checkpoint import checksums, torch_dist
from megarl.runtime import collectives

if TYPE_CHECKING:  # the recipe's section; megarl.config sits above the checkpoints
    from megarl.config import CheckpointConfig

FORMAT_VERSION = 2  # 1: per-rank .pt files; 2: torch_dist
TENSORS_DIR = "torch_dist"
RNG_DIR = "rng"
PROGRESS_DIR = "progress"
STATE_FILE = "trainer_state.json"


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    from megarl.runtime.device import rng_state

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "megatron_tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    device_state = rng_state()
    if device_state is not None:
        state["device"] = device_state
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    from megarl.runtime.device import set_rng_state

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "megatron_tracker" in state:  # absent when resharding: the model-parallel streams keep their fresh seeding
        tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron_tracker"])
    set_rng_state(state.get("device"))


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {
        "world_size": dist.get_world_size(),
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
    }


def _padded_vocab(workers: dict) -> int | None:
    """Rows of the embedding at this layout: the one shape resharding cannot change."""
    from megatron.core import parallel_state as ps

    for worker in workers.values():
        spec = getattr(worker, "spec", None)
        if spec is not None:
            return spec.padded_vocab_size(ps.get_tensor_model_parallel_world_size())
    return None


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


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under `root` with the COMPLETE marker, oldest first (not yet verified)."""
    root = Path(root)
    if not root.exists():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and "." not in p.name and (p / "COMPLETE").exists()]
    return sorted(found, key=_step_of)


class CheckpointManager:
    """The checkpoints under `root`, kept and written as the recipe's `checkpoint` section says
    (keep_last, async_save)."""

    def __init__(self, root: Path, settings: CheckpointConfig):
        self.root = Path(root)
        self.keep_last = settings.keep_last
        self._queue = None
        if settings.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue()

    def _complete(self) -> list[Path]:
        return complete_checkpoints(self.root)

    def save(self, step: int, workers: dict, driver_state: dict, rank_state: dict | None = None) -> Path:
        """Collective: write step `step` (with `rank_state`: this rank's part of the next step, stopped
        between phases). With async_save the tensors are written in the background and the
        checkpoint becomes complete when finalized (see `wait`)."""
        self.wait()
        _check_finite_weights(workers, step)
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f"step_{step:06d}.tmp"
        rank = dist.get_rank()
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / RNG_DIR).mkdir(parents=True)
        collectives.barrier()
        rng = tmp / RNG_DIR / f"rank_{rank:05d}.pt"
        torch.save(_rng_state(), rng.with_suffix(".partial"))
        os.replace(rng.with_suffix(".partial"), rng)
        if rank_state is not None:
            progress = tmp / PROGRESS_DIR / f"rank_{rank:05d}.pt"
            progress.parent.mkdir(exist_ok=True)
            torch.save(rank_state, progress.with_suffix(".partial"))
            os.replace(progress.with_suffix(".partial"), progress)
        if rank == 0:
            layout = {**_layout(), "padded_vocab": _padded_vocab(workers), "format": FORMAT_VERSION}
            (tmp / STATE_FILE).write_text(json.dumps({**driver_state, "layout": layout}))
        request = torch_dist.save_training_state(tmp / TENSORS_DIR, workers, async_save=self._queue is not None)
        if request is None:
            self._complete_save(tmp, final)
        else:
            request.add_finalize_fn(lambda: self._complete_save(tmp, final))
            self._queue.schedule_async_request(request)
        return final

    def wait(self) -> None:
        """Collective: finish an asynchronous save still in flight (no-op when none)."""
        if self._queue is not None and self._queue.get_num_unfinalized_calls():
            self._queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        self.wait()
        if self._queue is not None:
            self._queue.close()

    def _complete_save(self, tmp: Path, final: Path) -> None:
        """Collective: checksum every file, then COMPLETE, rename into place and prune."""
        collectives.barrier()
        digests = self._hash_in_parallel(tmp)
        if dist.get_rank() == 0:
            checksums.write_manifest(tmp, digests)
            (tmp / "COMPLETE").write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune_after(final)
        collectives.barrier()

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
        """Restore the newest checkpoint that verifies into `workers`; returns the driver state (with
        this rank's `rank_state` when the checkpoint was written between the phases of a step) or
        None when there is none. Checkpoints that fail verification are skipped with a message."""
        self.wait()
        rank = dist.get_rank()
        if rank == 0 and self.root.exists():
            for stale in self.root.glob("step_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        collectives.barrier()
        candidates = self._complete()
        skipped = []
        for path in reversed(candidates):
            problem = self._verify(path)
            state = None
            if problem is None:
                try:
                    state = json.loads((path / STATE_FILE).read_text())
                    _check_format(path, state["layout"])
                    roles = torch_dist.roles_in(path / TENSORS_DIR)
                except OldFormatError:
                    raise
                except Exception as err:  # noqa: BLE001 - any unreadable file means: try an older checkpoint
                    problem = f"cannot be read ({type(err).__name__}: {err})"
                problem = _first_problem(problem)
            if problem is None:
                _check_loadable(path, state["layout"], roles, workers)
                _check_progress_layout(path, state["layout"])
                try:
                    self._restore(path, state, workers)
                except Exception as err:  # noqa: BLE001 - a file that verifies but does not load
                    problem = f"cannot be loaded ({type(err).__name__}: {err})"
                problem = _first_problem(problem)
            if problem is not None:
                skipped.append(path.name)
                self._reject(path, problem)
                collectives.barrier()
                continue
            progress = path / PROGRESS_DIR / f"rank_{rank:05d}.pt"
            rank_state = torch.load(progress, map_location="cpu", weights_only=False) if progress.exists() else None
            return {**state, "rank_state": rank_state}
        if skipped:
            raise NoVerifiedCheckpointError(
                f"no checkpoint under {self.root} verifies (skipped {', '.join(skipped)}, now *.rejected); "
                "restore one or start a new run directory"
            )
        return None

    def _restore(self, path: Path, state: dict, workers: dict) -> None:
        torch_dist.load_training_state(path / TENSORS_DIR, workers)
        saved = state["layout"]
        same_layout = {k: saved.get(k) for k in ("world_size", "tp", "pp")} == _layout()
        rng_file = path / RNG_DIR / f"rank_{dist.get_rank() if same_layout else 0:05d}.pt"
        rng = torch.load(rng_file, map_location="cpu", weights_only=False)
        if not same_layout:
            # Another layout: the per-rank model-parallel RNG streams have no counterpart; they keep
            # the fresh seeding of this run, the host RNGs continue from the driver's.
            rng.pop("megatron_tracker", None)
            rng.pop("device", None)
            if dist.get_rank() == 0:
                _say(f"checkpoint {path.name} was written at tp={saved['tp']} pp={saved['pp']} world_size="
                     f"{saved['world_size']}; resharded to {_layout()}")
        _set_rng_state(rng)


class OldFormatError(ValueError):
    """A checkpoint written by an older megarl (per-rank .pt files), which this one does not read."""


def _check_format(path: Path, layout: dict) -> None:
    if layout.get("format", 1) != FORMAT_VERSION:
        raise OldFormatError(
            f"checkpoint {path} holds per-rank .pt files (megarl's format {layout.get('format', 1)}); this megarl resumes "
            f"from torch_dist checkpoints (format {FORMAT_VERSION}): finish the run with the megarl that wrote it, or start "
            "a new run directory from its weights (model.path)"
        )


def _check_loadable(path: Path, saved: dict, roles: set[str], workers: dict) -> None:
    """Raise ValueError when this run cannot load a (verified) checkpoint: a worker it lacks, or a
    padded vocab that differs at this run's TP size. Any other TP/PP/DP layout reshards."""
    for name in workers:
        if name not in roles:
            raise ValueError(f"checkpoint {path} has no {name!r} state; the recipe's algorithm changed since it was written")
    vocab = _padded_vocab(workers)
    if saved.get("padded_vocab") is not None and vocab is not None and saved["padded_vocab"] != vocab:
        raise ValueError(
            f"checkpoint {path} was written at tp={saved['tp']} with the vocab padded to {saved['padded_vocab']} rows; at "
            f"this run's tp the padded vocab has {vocab} rows, which resharding cannot change: resume at a TP size "
            "with the same padded vocab (Megatron pads to a multiple of 128 x TP)"
        )


def _check_progress_layout(path: Path, saved: dict) -> None:
    """A checkpoint written between the phases of a step holds each rank's share of that step (its
    data-parallel slice of the batch, partly updated): only the same layout can continue it."""
    mine = {k: saved.get(k) for k in ("world_size", "tp", "pp")}
    if (path / PROGRESS_DIR).exists() and mine != _layout():
        raise ValueError(
            f"checkpoint {path} was written in the middle of step {_step_of(path) + 1} (stopped between its phases) at "
            f"tp={saved['tp']} pp={saved['pp']} world_size={saved['world_size']}; resume it with that layout (this run has "
            f"{_layout()}), then change the layout at a later checkpoint"
        )


def _first_problem(mine: str | None) -> str | None:
    """Collective: the first rank's problem (rank order), or None when no rank has one."""
    problems = collectives.all_gather_objects(mine)
    return next((f"rank {r}: {p}" if len(problems) > 1 else p for r, p in enumerate(problems) if p), None)


def export_hf(actor_module, out_dir: Path, hf_assets_dir: Path, is_driver: bool) -> Path:
    """Write the actor as a standard HF directory (what `megarl eval` and SGLang load): the HF tensors
    gathered from the live model as weight sync gathers them (models/export.gather_hf_tensors), each
    written into the safetensors files as it arrives; no staging copy. Collective (every rank calls;
    the driver, global rank 0, writes)."""
    from megarl.checkpoint.convert import write_hf_model
    from megarl.checkpoint.format import read_hf_config
    from megarl.models.export import gather_hf_tensors, unwrap_model

    module = unwrap_model(actor_module)
    tensors = gather_hf_tensors(actor_module, dst=0)
    if is_driver:
        try:
            if out_dir.exists():
                shutil.rmtree(out_dir)
            write_hf_model(out_dir, module.megarl_spec, read_hf_config(hf_assets_dir), hf_assets_dir, tensors,
                           next(module.parameters()).dtype)
        finally:
            for _ in tensors:  # after an error too: the other ranks are still in the gather's collectives
                pass
    else:
        for _ in tensors:
            pass
    collectives.barrier()
    return out_dir
