"""The trainer's advantage functions go through the kernel dispatch (issue 11): `impl="auto"` on
tensors placed on the training device, so GPUs run the Triton kernels. Here the Triton kernels run
under TRITON_INTERPRET=1 (tests/conftest.py) on the same call path as training and must give the
torch reference's results; the old per-token Python loop of REINFORCE++ returns is the reference
for `discounted_returns`."""

from unittest import mock

import pytest
import torch

from megarl.runtime.device import get_device
from megarl.algorithms import advantages as A


def _ragged(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for n in lengths]


@pytest.mark.parametrize("mode", ["mean_std", "mean", "leave_one_out"])
def test_sequence_advantages_triton_equals_torch(mode):
    g = torch.Generator().manual_seed(0)
    groups = [0] * 8 + [1] * 5 + [2] * 1 + [3] * 8  # ragged groups (filtered samples), one singleton
    rewards = torch.randint(0, 3, (len(groups),), generator=g).float().tolist()
    triton = A.sequence_advantages(rewards, groups, mode, impl="triton")
    torch_ref = A.sequence_advantages(rewards, groups, mode, impl="torch")
    assert triton == pytest.approx(torch_ref, abs=1e-6) and any(a != 0 for a in torch_ref)


def test_gae_and_returns_triton_equal_torch_and_the_old_loop():
    lengths = [7, 1, 12, 4]
    rewards, values = _ragged(1, lengths), _ragged(2, lengths)
    adv_t, ret_t = A.gae_advantages(rewards, values, 0.99, 0.95, impl="triton")
    adv_r, ret_r = A.gae_advantages(rewards, values, 0.99, 0.95, impl="torch")
    for a, b in zip(adv_t + ret_t, adv_r + ret_r):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert [len(a) for a in adv_t] == lengths
    returns_t = A.discounted_returns(rewards, 0.9, impl="triton")
    returns_r = A.discounted_returns(rewards, 0.9, impl="torch")
    for r, got_t, got_r in zip(rewards, returns_t, returns_r):
        old, running = torch.zeros_like(r), 0.0  # the per-token loop this replaced
        for t in range(len(r) - 1, -1, -1):
            running = float(r[t]) + 0.9 * running
            old[t] = running
        assert torch.equal(got_r, old)
        torch.testing.assert_close(got_t, old, atol=1e-5, rtol=1e-5)


def test_training_calls_use_auto_dispatch_on_the_training_device():
    """What the trainer calls (default impl) hands the kernels tensors on the training device with
    impl='auto', so the dispatch picks Triton wherever that device is a GPU."""
    seen = []

    def spy(real):
        def call(*args, **kwargs):
            seen.append((real.__name__, args[0].device, kwargs.get("impl")))
            return real(*args, **kwargs)
        return call

    with mock.patch.object(A, "group_advantages", spy(A.group_advantages)), mock.patch.object(A, "gae", spy(A.gae)):
        A.sequence_advantages([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], "mean_std")
        A.gae_advantages(_ragged(3, [3, 2]), _ragged(4, [3, 2]), 1.0, 1.0)
        A.discounted_returns(_ragged(5, [3, 2]), 1.0)
    assert [name for name, _, _ in seen] == ["group_advantages", "gae", "gae"]
    assert all(device == get_device() and impl == "auto" for _, device, impl in seen)
