"""Training checkpoints carry per-file SHA-256 checksums: a corrupted, truncated or missing file in
the newest checkpoint makes resume skip it (with a message) and restore the previous one; pruning
never removes the newest good checkpoint first; weights with inf/nan are never saved.

In-process, a world of one (gloo): real torch modules, optimizers and schedulers under megarl's
CheckpointManager."""

import dataclasses
import json
import os

import pytest
import torch

from megarl.checkpoint import checksums
from megarl.train.checkpointing import CheckpointManager, NonFiniteWeightsError


@dataclasses.dataclass
class _Settings:
    optim: object = None


@dataclasses.dataclass
class _Worker:  # what CheckpointManager reads from a megarl ModelWorker
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    settings: _Settings = dataclasses.field(default_factory=_Settings)


@pytest.fixture(scope="module", autouse=True)
def runtime():
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)


def _worker(seed: int) -> _Worker:
    torch.manual_seed(seed)
    model = torch.nn.Linear(512, 512)  # 1 MiB of fp32 weights
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _Worker(model, opt, torch.optim.lr_scheduler.StepLR(opt, 10))


def _save(manager, step, seed):
    worker = _worker(seed)
    manager.save(step, {"actor": worker}, {"step": step})
    return worker.model.weight.detach().clone()


def _corrupt(path, nbytes=20 << 10):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(nbytes))


def _resume(manager):
    fresh = _worker(99)
    state = manager.load_latest({"actor": fresh})
    return state, fresh.model.weight.detach()


def test_manifest_lists_every_file_with_its_digest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    _save(manager, 1, seed=1)
    ckpt = tmp_path / "step_000001"
    body = json.loads((ckpt / checksums.MANIFEST_NAME).read_text())
    assert body["algorithm"] == "sha256"
    assert sorted(body["files"]) == ["rank_00000.pt", "trainer_state.json"]
    for name, entry in body["files"].items():
        assert entry == dataclasses.asdict(checksums.digest_file(ckpt / name))


@pytest.mark.parametrize("damage", ["corrupt_20kb", "truncate", "delete", "delete_manifest", "corrupt_state_json"])
def test_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, capsys, damage):
    manager = CheckpointManager(tmp_path, keep_last=2)
    good = _save(manager, 1, seed=1)
    _save(manager, 2, seed=2)
    newest = tmp_path / "step_000002"
    shard = newest / "rank_00000.pt"
    if damage == "corrupt_20kb":
        _corrupt(shard)
        why = "rank_00000.pt does not match its SHA-256"
    elif damage == "truncate":
        os.truncate(shard, shard.stat().st_size // 3)
        why = "rank_00000.pt has"
    elif damage == "delete":
        shard.unlink()
        why = "rank_00000.pt is missing"
    elif damage == "delete_manifest":
        (newest / checksums.MANIFEST_NAME).unlink()
        why = "no CHECKSUMS.json"
    else:
        (newest / "trainer_state.json").write_text('{"step": 7, "layout": null}')
        why = "trainer_state.json has"
    state, weight = _resume(manager)
    assert state["step"] == 1
    assert torch.equal(weight, good)
    err = capsys.readouterr().err
    assert "checkpoint step_000002 skipped: " in err and why in err, err
    assert "Traceback" not in err
    assert not newest.exists() and (tmp_path / "step_000002.rejected").is_dir()


def test_no_verifiable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    _save(manager, 1, seed=1)
    _corrupt(tmp_path / "step_000001" / "rank_00000.pt")
    with pytest.raises(RuntimeError, match="no checkpoint under .* verifies"):
        _resume(manager)


def test_resume_after_a_skip_then_pruning_keeps_good_checkpoints(tmp_path):
    """The issue's sequence: the newest is corrupted, keep_last=2. The resumed run writes new
    checkpoints; the good older one is pruned only once newer ones are in place."""
    manager = CheckpointManager(tmp_path, keep_last=2)
    _save(manager, 1, seed=1)
    _save(manager, 2, seed=2)
    _corrupt(tmp_path / "step_000002" / "rank_00000.pt")
    state, _ = _resume(manager)
    assert state["step"] == 1
    second = _save(manager, 2, seed=3)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000001", "step_000002", "step_000002.rejected"]
    _save(manager, 3, seed=4)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000002", "step_000002.rejected", "step_000003"]
    state, _ = _resume(manager)
    assert state["step"] == 3
    assert torch.equal(torch.load(tmp_path / "step_000002" / "rank_00000.pt", weights_only=False)["actor"]["model"]["weight"],
                       second)


def test_pruning_waits_for_the_new_checkpoint_to_check_out(tmp_path, monkeypatch, capsys):
    manager = CheckpointManager(tmp_path, keep_last=1)
    _save(manager, 1, seed=1)

    real_write = checksums.write_manifest

    def manifest_with_a_wrong_size(root, digests):  # a file that is not what was hashed
        name = "rank_00000.pt"
        digests = {**digests, name: checksums.FileDigest(digests[name].size + 1, digests[name].sha256)}
        return real_write(root, digests)

    monkeypatch.setattr(checksums, "write_manifest", manifest_with_a_wrong_size)
    _save(manager, 2, seed=2)
    assert (tmp_path / "step_000001").is_dir(), "the good checkpoint was pruned before the new one checked out"
    assert "keeping older checkpoints" in capsys.readouterr().err


def test_non_finite_weights_are_never_saved(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    _save(manager, 1, seed=1)
    worker = _worker(2)
    with torch.no_grad():
        worker.model.weight[3, 5] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="actor weights hold inf/nan at step 2"):
        manager.save(2, {"actor": worker}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]


def test_hash_speed(tmp_path):
    """SHA-256 of a checkpoint file streams at hundreds of MB/s (reported, loosely bounded)."""
    import time

    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(256 << 20))
    start = time.perf_counter()
    checksums.digest_file(path)
    rate = 256 / (time.perf_counter() - start)
    print(f"sha256: {rate:.0f} MB/s")
    assert rate > 100
