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

    def _make_order(self) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[Row]:
        out = []
        while len(out) < k:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self.rows[self._order[self.position]])
            self.position += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._make_order()
