"""The default prompt loader: torch DataLoader batches, sharded per data-parallel rank, reshuffled per epoch.

Each data-parallel rank sees a disjoint 1/dp_size of the prompts per epoch (torch's
DistributedSampler, which needs no process group when rank and size are given); `set_epoch`
reshuffles deterministically from (seed, epoch). Batches are lists of PromptRecord.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from megarl.data.loading import PromptRecord


class PromptDataset(Dataset):
    def __init__(self, records: Sequence[PromptRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]


def _as_list(batch: list[PromptRecord]) -> list[PromptRecord]:
    return batch


class PromptLoader:
    """Batches of prompts for one data-parallel rank; call `set_epoch(e)` before each epoch."""

    def __init__(
        self,
        records: Sequence[PromptRecord],
        batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if len(records) < dp_size * (batch_size if drop_last else 1):
            raise ValueError(
                f"{len(records)} prompts are too few for dp_size={dp_size} x batch_size={batch_size}; "
                "lower the batch size or add data"
            )
        self.dataset = PromptDataset(records)
        self.sampler = DistributedSampler(self.dataset, num_replicas=dp_size, rank=dp_rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler, collate_fn=_as_list, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[PromptRecord]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)
