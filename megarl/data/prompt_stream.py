"""The trainer's training prompts as a resumable stream: shuffled per epoch from the seed, `take(k)` at a time.

The driver rank takes as many prompts as a step needs (more when dynamic sampling refills a
batch), across epoch boundaries; the checkpoint stores (epoch, position), and `restore` rebuilds
the same epoch order, so a resumed run takes the prompts an uninterrupted one would.
"""

from __future__ import annotations

import random
from typing import Generic, TypeVar

Row = TypeVar("Row")


class PromptStream(Generic[Row]):
    """Deterministic, resumable pass over training prompts: shuffled per epoch from the seed."""

    def __init__(self, rows: list[Row], seed: int, shuffle: bool = True):
        if not rows:
            raise ValueError("the training set is empty; check data.train")
        self.rows, self.seed, self.shuffle = rows, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self, epoch: int | None = None) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + (self.epoch if epoch is None else epoch)).shuffle(order)
        return order

    def take(self, k: int) -> list[Row]:
        return [self.take_keyed()[1] for _ in range(k)]

    def take_keyed(self) -> tuple[tuple[int, int], Row]:
        """The next prompt and its key (epoch, position), from which `row_at` finds it again."""
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._make_order()
        key = (self.epoch, self.position)
        self.position += 1
        return key, self.rows[self._order[key[1]]]

    def row_at(self, key: tuple[int, int]) -> Row:
        """The prompt drawn at (epoch, position) (an async run's prompts regenerated on resume)."""
        epoch, position = key
        order = self._order if epoch == self.epoch else self._make_order(epoch)
        return self.rows[order[position]]

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._make_order()
