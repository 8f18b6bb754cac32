"""Optional NVIDIA DALI input pipeline for tokenized prompt shards (CPU operators).

Reads the shard folders of megarl.data.token_shards with `fn.readers.numpy`: each
data-parallel rank reads its own shard of the files (`shard_id`/`num_shards`), the whole set is
reshuffled after every epoch (`shuffle_after_epoch`, seeded, so all ranks agree) and shards
rotate between ranks each epoch, so within an epoch ranks stay disjoint. `fn.pad` makes dense
batches; lengths come from the sample shapes. Batches match `torch_token_loader`'s:
{"tokens": [B, L] int64, "lengths": [B], "indices": [B]}. Install with
`pip install nvidia-dali-cuda120` (megarl[dali]); the torch loader stays the default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from megarl.data.token_shards import read_shard_index


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class DaliTokenLoader:
    """Epochs of padded token batches for one data-parallel rank, read by a DALI pipeline."""

    def __init__(self, shard_dir: str | os.PathLike, batch_size: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0, num_threads: int = 2):
        try:
            from nvidia.dali import fn, pipeline_def
        except ImportError as error:
            raise ImportError("the DALI loader needs NVIDIA DALI: pip install nvidia-dali-cuda120 (or megarl[dali])") from error
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        shard_dir = Path(shard_dir)
        index, meta = read_shard_index(shard_dir)
        if len(index) < dp_size * batch_size:
            raise ValueError(f"{len(index)} prompts are too few for dp_size={dp_size} x batch_size={batch_size}")
        self.pad_token_id = int(meta["pad_token_id"])
        self.batch_size = batch_size
        self.num_files, self.dp_rank, self.dp_size = len(index), dp_rank, dp_size
        self.batches_per_epoch = (len(index) // dp_size) // batch_size  # the same on every rank
        self.epochs_read = 0
        files = [row["file"] for row in index]

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None, seed=seed)
        def token_pipeline():
            data = fn.readers.numpy(
                file_root=str(shard_dir / "prompts"), files=files, shard_id=dp_rank, num_shards=dp_size,
                shuffle_after_epoch=True, seed=seed, name="Reader", pad_last_batch=True,
            )
            return fn.pad(data, fill_value=self.pad_token_id), data.shape()

        self.pipeline = token_pipeline()
        self.pipeline.build()

    def _shard_size(self, epoch: int) -> int:
        # DALI readers move every rank to the next shard each epoch (stick_to_shard=False).
        shard = (self.dp_rank + epoch) % self.dp_size
        return (shard + 1) * self.num_files // self.dp_size - shard * self.num_files // self.dp_size

    def epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch: `batches_per_epoch` full batches, equal on all ranks. The reader pads its
        last batch (pad_last_batch), so every epoch starts on a batch boundary; batches beyond
        the common count are read and dropped, as drop_last does."""
        batches_in_shard = -(-self._shard_size(self.epochs_read) // self.batch_size)
        self.epochs_read += 1
        for batch_number in range(batches_in_shard):
            padded, shapes = self.pipeline.run()
            if batch_number >= self.batches_per_epoch:
                continue
            array = torch.from_numpy(np.asarray(padded.as_tensor()).astype(np.int64))
            lengths = torch.from_numpy(np.asarray(shapes.as_tensor()).reshape(-1).astype(np.int64)) - 1
            yield {"tokens": array[:, 1:], "lengths": lengths, "indices": array[:, 0].clone()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.epoch()

    def __len__(self) -> int:
        return self.batches_per_epoch
