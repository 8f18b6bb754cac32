"""Training checkpoints carry per-file SHA-256 checksums: a corrupted, truncated or missing file in
the newest checkpoint makes resume skip it (with a message) and restore the previous one; pruning
never removes the newest good checkpoint first; weights with inf/nan are never saved.

In-process, a world of one (gloo): real megarl actor workers (Megatron GPT, Megatron optimizer, plain and
distributed, LR scheduler) under megarl's CheckpointManager, writing torch_dist checkpoints."""

import dataclasses
import json
import os

import pytest
import torch

from megarl.checkpoint import checksums
from megarl.checkpoint.manager import CheckpointManager, NonFiniteWeightsError
from megarl.config import CheckpointConfig

SHARD = "torch_dist/__0_0.distcp"  # rank 0's tensor file in the torch_dist folder
WEIGHT = "embedding.word_embeddings.weight"


@pytest.fixture(scope="module", autouse=True)
def runtime():
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)


@pytest.fixture(scope="module")
def spec(tiny_hf_models):
    from megarl.models.spec import ModelSpec

    return ModelSpec.from_hf(tiny_hf_models["qwen2"])


@pytest.fixture(params=[False, True], ids=["optimizer", "distributed-optimizer"])
def distributed_optimizer(request):
    return request.param


@pytest.fixture
def make_worker(spec, distributed_optimizer):
    """A real megarl actor worker (Megatron GPT, Megatron optimizer, LR scheduler), its weights drawn from `seed`."""
    from megarl.config import ParallelConfig
    from megarl.train.workers import ModelWorker, WorkerSettings

    def make(seed: int, step: bool = True):
        gen = torch.Generator().manual_seed(seed)

        def draw(model):
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

        worker = ModelWorker(spec, WorkerSettings(role="actor", dtype=torch.float32, trainable=True, optimizer_steps=10,
                                                  parallel=ParallelConfig(lr=1e-3, distributed_optimizer=distributed_optimizer)),
                             weights=draw)
        if not step:  # as the trainer builds it before resuming
            return worker
        worker.optimizer.zero_grad()
        for p in worker.model.parameters():  # one optimizer step, so the optimizer has state to save
            p.main_grad.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
        worker.optimizer.step()
        worker.scheduler.step(increment=1)
        return worker

    return make


def _weight(worker):
    return dict(worker.model.named_parameters())[WEIGHT].detach().clone()


def _save(manager, step, worker):
    manager.save(step, {"actor": worker}, {"step": step})
    return _weight(worker)


def _corrupt(path, nbytes=20 << 10):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(nbytes))


def _resume(manager, fresh):
    state = manager.load_latest({"actor": fresh})
    return state, _weight(fresh)


def test_manifest_lists_every_file_with_its_digest(tmp_path, make_worker):
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2))
    _save(manager, 1, make_worker(1))
    ckpt = tmp_path / "step_000001"
    body = json.loads((ckpt / checksums.MANIFEST_NAME).read_text())
    assert body["algorithm"] == "sha256"
    assert {SHARD, "torch_dist/.metadata", "torch_dist/common.pt", "torch_dist/metadata.json", "rng/rank_00000.pt",
            "trainer_state.json"} <= set(body["files"])
    assert sorted(body["files"]) == checksums.files_to_hash(ckpt, exclude=("COMPLETE",))
    for name, entry in body["files"].items():
        assert entry == dataclasses.asdict(checksums.digest_file(ckpt / name))


@pytest.mark.parametrize("damage", ["corrupt_20kb", "truncate", "delete", "delete_manifest", "corrupt_state_json"])
def test_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, capsys, damage, make_worker):
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2))
    good = _save(manager, 1, make_worker(1))
    _save(manager, 2, make_worker(2))
    newest = tmp_path / "step_000002"
    shard = newest / SHARD
    if damage == "corrupt_20kb":
        _corrupt(shard)
        why = f"{SHARD} does not match its SHA-256"
    elif damage == "truncate":
        os.truncate(shard, shard.stat().st_size // 3)
        why = f"{SHARD} has"
    elif damage == "delete":
        shard.unlink()
        why = f"{SHARD} is missing"
    elif damage == "delete_manifest":
        (newest / checksums.MANIFEST_NAME).unlink()
        why = "no CHECKSUMS.json"
    else:
        (newest / "trainer_state.json").write_text('{"step": 7, "layout": null}')
        why = "trainer_state.json has"
    state, weight = _resume(manager, make_worker(99, step=False))
    assert state["step"] == 1
    assert torch.equal(weight, good)
    err = capsys.readouterr().err
    assert "checkpoint step_000002 skipped: " in err and why in err, err
    assert "Traceback" not in err
    assert not newest.exists() and (tmp_path / "step_000002.rejected").is_dir()


def test_no_verifiable_checkpoint_is_an_error_not_a_fresh_start(tmp_path, make_worker):
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2))
    _save(manager, 1, make_worker(1))
    _corrupt(tmp_path / "step_000001" / SHARD)
    with pytest.raises(RuntimeError, match="no checkpoint under .* verifies"):
        _resume(manager, make_worker(99, step=False))


def test_resume_after_a_skip_then_pruning_keeps_good_checkpoints(tmp_path, make_worker):
    """The issue's sequence: the newest is corrupted, keep_last=2. The resumed run writes new
    checkpoints; the good older one is pruned only once newer ones are in place."""
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2))
    _save(manager, 1, make_worker(1))
    _save(manager, 2, make_worker(2))
    _corrupt(tmp_path / "step_000002" / SHARD)
    state, _ = _resume(manager, make_worker(99, step=False))
    assert state["step"] == 1
    second = _save(manager, 2, make_worker(3))
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000001", "step_000002", "step_000002.rejected"]
    third = _save(manager, 3, make_worker(4))
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000002", "step_000002.rejected", "step_000003"]
    state, weight = _resume(manager, make_worker(99, step=False))
    assert state["step"] == 3 and torch.equal(weight, third)
    from megatron.core import dist_checkpointing

    stored = dist_checkpointing.load_plain_tensors(str(tmp_path / "step_000002" / "torch_dist"))
    assert torch.equal(stored[WEIGHT], second)


def test_pruning_waits_for_the_new_checkpoint_to_check_out(tmp_path, monkeypatch, capsys, make_worker):
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=1))
    _save(manager, 1, make_worker(1))

    real_write = checksums.write_manifest

    def manifest_with_a_wrong_size(root, digests):  # a file that is not what was hashed
        name = SHARD
        digests = {**digests, name: checksums.FileDigest(digests[name].size + 1, digests[name].sha256)}
        return real_write(root, digests)

    monkeypatch.setattr(checksums, "write_manifest", manifest_with_a_wrong_size)
    _save(manager, 2, make_worker(2))
    assert (tmp_path / "step_000001").is_dir(), "the good checkpoint was pruned before the new one checked out"
    assert "keeping older checkpoints" in capsys.readouterr().err


def test_non_finite_weights_are_never_saved(tmp_path, make_worker):
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2))
    _save(manager, 1, make_worker(1))
    worker = make_worker(2)
    with torch.no_grad():
        dict(worker.model.named_parameters())[WEIGHT][3, 5] = float("nan")
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


def test_resume_restores_optimizer_and_scheduler_exactly(tmp_path, make_worker):
    """A worker restored from the checkpoint takes the same next step as the one that wrote it
    (bitwise): the optimizer state (Adam moments, step; the distributed optimizer's shards) and
    the LR schedule came back, not only the weights."""
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2))
    saved = make_worker(1)
    _save(manager, 1, saved)
    fresh = make_worker(99, step=False)
    manager.load_latest({"actor": fresh})
    assert fresh.scheduler.num_steps == saved.scheduler.num_steps == 1
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in saved.model.parameters()]
    for worker in (saved, fresh):
        worker.optimizer.zero_grad()
        for p, g in zip(worker.model.parameters(), grads):
            p.main_grad.copy_(g)
        worker.optimizer.step()
    for (name, a), b in zip(saved.model.named_parameters(), fresh.model.parameters()):
        assert torch.equal(a, b), name


def test_async_save_is_complete_and_checksummed_after_close(tmp_path, make_worker):
    """checkpoint.async_save: megatron-core's background writer stores the tensors; the manifest,
    COMPLETE marker and rename happen when the save is finalized (the next save, or close)."""
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2, async_save=True))
    worker = make_worker(1)
    final = manager.save(1, {"actor": worker}, {"step": 1})
    manager.close()
    assert (final / "COMPLETE").is_file() and not (tmp_path / "step_000001.tmp").exists()
    checksums.verify_files(final, checksums.read_manifest(final), sorted(checksums.read_manifest(final)))
    state, weight = _resume(CheckpointManager(tmp_path, CheckpointConfig()), make_worker(99, step=False))
    assert state["step"] == 1 and torch.equal(weight, _weight(worker))


def test_a_checkpoint_of_the_old_per_rank_format_is_refused_not_rejected(tmp_path, make_worker):
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=2))
    _save(manager, 1, make_worker(1))
    ckpt = tmp_path / "step_000001"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["layout"].pop("format")  # what megarl wrote before torch_dist (per-rank rank_NNNNN.pt files)
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    checksums.write_manifest(ckpt, checksums.digest_files(ckpt, checksums.files_to_hash(ckpt, exclude=("COMPLETE",))))
    with pytest.raises(ValueError, match="holds per-rank .pt files"):
        _resume(manager, make_worker(99, step=False))
    assert ckpt.is_dir()  # left in place, not renamed .rejected
