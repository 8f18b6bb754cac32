"""PromptStream: every prompt once per epoch, a new order each epoch, and restore() continues exactly."""

from __future__ import annotations

import random

import pytest

from megarl.data.prompt_stream import PromptStream


def test_each_epoch_is_a_permutation_in_a_new_order():
    rows = list(range(10))
    stream = PromptStream(rows, seed=3)
    first, second = stream.take(10), stream.take(10)
    assert sorted(first) == sorted(second) == rows and first != second
    assert stream.state() == {"epoch": 1, "position": 10}
    assert first == [rows[i] for i in _seeded_order(10, seed=3, epoch=0)]  # the order checkpoints rely on
    assert PromptStream(rows, seed=3, shuffle=False).take(12) == rows + rows[:2]


def test_restore_continues_where_the_saved_stream_was():
    rows = [f"p{i}" for i in range(7)]
    uninterrupted = PromptStream(rows, seed=11)
    expected = [uninterrupted.take(k) for k in (3, 5, 4, 6)]  # crosses two epoch boundaries
    saved = PromptStream(rows, seed=11)
    taken = [saved.take(3), saved.take(5)]
    resumed = PromptStream(rows, seed=11)
    resumed.restore(saved.state())
    taken += [resumed.take(4), resumed.take(6)]
    assert taken == expected


def test_empty_training_set_is_a_clear_error():
    with pytest.raises(ValueError, match="training set is empty; check data.train"):
        PromptStream([], seed=0)


def _seeded_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order
