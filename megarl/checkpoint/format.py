"""HF model directories as megarl reads and writes them, dtype names, and atomic output directories.

Output directories are written into `<out>.tmp-<pid>` and renamed into place at the end, so an
interrupted write never leaves a directory that looks complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from megarl.checkpoint.safetensors_stream import (
    DTYPE_TO_SAFETENSORS,
    SAFETENSORS_TO_DTYPE,
    CheckpointFormatError,
    SafetensorsReader,
)

HF_ASSETS_DIR = "hf"
HF_INDEX_FILE = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_TO_SAFETENSORS[dtype]


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'fp16' / 'fp32' / 'BF16' (safetensors) / torch dtype -> torch dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name in DTYPES:
        return DTYPES[name]
    if name in SAFETENSORS_TO_DTYPE:
        return SAFETENSORS_TO_DTYPE[name]
    raise ValueError(f"dtype={name!r}; use one of {', '.join(DTYPES)}")


# ---- HF model directories ----------------------------------------------------------------------
class HFSafetensorsDir:
    """An HF model directory's safetensors weights (single file or index), validated on open."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise CheckpointFormatError(f"{self.dir}: not a directory; pass a Hugging Face model directory")
        index = self.dir / HF_INDEX_FILE
        single = self.dir / "model.safetensors"
        self.readers: dict[str, SafetensorsReader] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointFormatError(f"{index}: not a valid safetensors index ({err!r})") from err
            for file in sorted(set(weight_map.values())):
                if not (self.dir / file).is_file():
                    raise CheckpointFormatError(f"{index}: lists shard file {file!r}, which does not exist in {self.dir}")
                self.readers[file] = SafetensorsReader(self.dir / file)
            for name, file in weight_map.items():
                if name not in self.readers[file]:
                    raise CheckpointFormatError(f"{index}: maps tensor {name!r} to {file}, which does not contain it")
            self.weight_map: dict[str, str] = dict(weight_map)
        elif single.is_file():
            self.readers[single.name] = SafetensorsReader(single)
            self.weight_map = {name: single.name for name in self.readers[single.name].names()}
        else:
            has_bin = any(self.dir.glob("*.bin"))
            raise CheckpointFormatError(
                f"{self.dir}: no model.safetensors or {HF_INDEX_FILE}"
                + (" (found .bin weights: re-save with transformers' save_pretrained to get safetensors)" if has_bin else "")
            )

    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _reader(self, name: str) -> SafetensorsReader:
        if name not in self.weight_map:
            raise CheckpointFormatError(f"{self.dir}: tensor {name!r} is not in the checkpoint")
        return self.readers[self.weight_map[name]]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._reader(name).shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._reader(name).dtype(name)

    def get(self, name: str) -> torch.Tensor:
        return self._reader(name).get(name)


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: missing; an HF model directory needs its config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointFormatError(f"{path}: not valid JSON ({err})") from err


def copy_hf_assets(src_dir: str | Path, dst_dir: str | Path) -> list[str]:
    """Copy the non-weight files (config, generation config, tokenizer, chat template, license) of an
    HF directory; returns the copied names."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(src_dir.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name != HF_INDEX_FILE:
            shutil.copy2(path, dst_dir / path.name)
            copied.append(path.name)
    return copied


def config_with_dtype(config: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """The HF config with its dtype field(s) set to `dtype` (transformers 5 writes `dtype`, 4.x `torch_dtype`)."""
    name = str(dtype).removeprefix("torch.")
    out = dict(config)
    keys = [k for k in ("dtype", "torch_dtype") if k in out] or ["torch_dtype"]
    for k in keys:
        out[k] = name
    return out


# ---- atomic output directories -----------------------------------------------------------------
def check_output_dir(out: str | Path) -> Path:
    """Refuse an output directory that exists and is not empty (or is a file)."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory; choose another --out")
        if any(out.iterdir()):
            raise FileExistsError(f"{out}: output directory exists and is not empty; remove it or choose another --out")
    return out


def _partial_lock(tmp: Path):
    from megarl.runtime.process import FileLock

    return FileLock(tmp.with_name(tmp.name + ".lock"))


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove `<out>.tmp-*` directories whose writer is gone (its lock file next to it is free; a
    partial without a lock file predates it or died before writing). A live writer's partial raises
    FileExistsError: two conversions must not write one output. Returns what was removed."""
    from megarl.runtime.process import LockBusyError

    removed = []
    for partial in sorted(out.parent.glob(f"{glob.escape(out.name)}.tmp-*")):
        if not partial.is_dir():
            continue
        lock = _partial_lock(partial)
        try:
            lock.acquire()
        except LockBusyError as err:
            raise FileExistsError(
                f"{out}: another process (pid {err.holder}) is writing it now ({partial.name}); wait for it or choose another --out"
            ) from None
        try:
            shutil.rmtree(partial)
            removed.append(partial)
        finally:
            lock.path.unlink(missing_ok=True)
            lock.release()
    return removed


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, tag: str | int | None = None) -> Iterator[Path]:
    """Yield a temporary directory `<out>.tmp-<pid>`; on success it replaces `out`, on error it is
    removed. The writer holds `<out>.tmp-<pid>.lock` meanwhile, so a later run can tell a partial
    left by a killed process (removed, with a message) from one being written."""
    out = check_output_dir(out)
    for stale in remove_stale_partials(out):
        print(f"megarl: removed {stale}, a partial output left by a process that no longer runs", file=sys.stderr)
    tmp = out.parent / f"{out.name}.tmp-{tag if tag is not None else os.getpid()}"
    lock = _partial_lock(tmp)
    lock.acquire()  # before the directory exists: a partial without a held lock is never live
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        check_output_dir(out)
        if out.exists():
            out.rmdir()  # empty (checked), so the rename can take its place
        os.replace(tmp, out)
    finally:
        lock.path.unlink(missing_ok=True)
        lock.release()
