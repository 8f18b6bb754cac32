"""bf16 workers keep the weights they were loaded with: Megatron's bf16 optimizer and its distributed
optimizer take fp32 main copies of the weights when they are built and write them back at every
step, so the load has to come first (megarl.train.workers.ModelWorker). A zero-gradient Adam step
(no weight decay) moves nothing: the weights stay bitwise equal to the loaded ones, after a fresh
load and after a resume from a checkpoint. Before the fix the worker built its optimizer first and
the trainer loaded afterwards: 21 of 30 parameters changed at the first step (NaN and ~3e38 in the
embedding), with either optimizer. Activation recompute (the GPU recipes' setting) changes no bit
of a bf16 step.

In-process, a world of one (gloo), real Megatron optimizers, megarl's CheckpointManager."""

import pytest
import torch
from tiny_models import make_tiny_hf

from megarl.checkpoint.manager import CheckpointManager
from megarl.config import CheckpointConfig, ParallelConfig


@pytest.fixture(scope="module", autouse=True)
def runtime():
    from megarl.runtime.distributed import init_runtime, shutdown_runtime

    yield init_runtime(1, 1)
    shutdown_runtime()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16_hf")
    return make_tiny_hf("qwen2", root / "a", seed=0), make_tiny_hf("qwen2", root / "b", seed=1)


@pytest.fixture(params=[False, True], ids=["optimizer", "distributed-optimizer"])
def distributed_optimizer(request):
    return request.param


def _worker(path, distributed_optimizer: bool, dtype: torch.dtype = torch.bfloat16, recompute: str | None = None,
            lr: float = 5e-7):
    from megarl.models.hf_io import load_hf_into_model
    from megarl.models.spec import ModelSpec
    from megarl.train.workers import ModelWorker, WorkerSettings

    spec = ModelSpec.from_hf(path)
    par = ParallelConfig(lr=lr, weight_decay=0.0, clip_grad=1.0, distributed_optimizer=distributed_optimizer,
                         recompute=recompute)
    settings = WorkerSettings(role="actor", dtype=dtype, parallel=par, trainable=True, optimizer_steps=4)
    return ModelWorker(spec, settings, weights=lambda model: load_hf_into_model(model, path, spec))


def _microbatches(seed: int):
    from megarl.models.pipeline import ModelInput

    ids = torch.randint(0, 900, (2, 17), generator=torch.Generator().manual_seed(seed))
    return [ModelInput(input_ids=ids[:, :-1].contiguous(), labels=ids[:, 1:].contiguous(),
                       position_ids=torch.arange(16).expand(2, 16))]


def _step(worker, zero: bool, seed: int = 0) -> float:
    from megatron.core import tensor_parallel

    def loss_fn(output, mb):
        losses = tensor_parallel.vocab_parallel_cross_entropy(output.float().transpose(0, 1).contiguous(),
                                                              mb.labels.t().contiguous())
        loss = losses.mean() * (0.0 if zero else 1.0)
        return loss, {"loss": loss.detach().clone()}

    _, grad_norm, _, stepped = worker.train_step(_microbatches(seed), loss_fn)
    assert stepped
    return grad_norm


def _weights(worker) -> dict:
    return {name: p.detach().clone() for name, p in worker.model.named_parameters()}


def _assert_bitwise(now: dict, expected: dict) -> None:
    changed = [name for name in expected if not torch.equal(now[name], expected[name])]
    assert not changed, f"{len(changed)} of {len(expected)} parameters changed: {changed[:4]}"


def test_zero_gradient_step_keeps_loaded_bf16_weights(hf_models, distributed_optimizer):
    from megarl.models.hf_io import HFCheckpoint

    worker = _worker(hf_models[0], distributed_optimizer)
    loaded = _weights(worker)
    assert all(p.dtype == torch.bfloat16 for p in loaded.values())
    ckpt = HFCheckpoint(hf_models[0])  # the load really happened: the embedding is the HF one in bf16
    try:
        assert torch.equal(loaded["embedding.word_embeddings.weight"][:1001],
                           ckpt.get("model.embed_tokens.weight").to(torch.bfloat16))
    finally:
        ckpt.close()
    assert _step(worker, zero=True) == 0.0
    _assert_bitwise(_weights(worker), loaded)
    assert _step(worker, zero=False) > 0  # a real step then moves the weights, and only a little
    moved = max((p.float() - loaded[n].float()).abs().max().item() for n, p in worker.model.named_parameters())
    assert 0 < moved < 1e-2


def test_zero_gradient_step_after_resume_keeps_checkpointed_bf16_weights(tmp_path, hf_models, distributed_optimizer):
    saved = _worker(hf_models[0], distributed_optimizer)
    _step(saved, zero=False, seed=1)  # Adam state and fp32 main copies that differ from the bf16 weights
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=1))
    manager.save(1, {"actor": saved}, {"step": 1})
    manager.wait()
    expected = _weights(saved)

    resumed = _worker(hf_models[1], distributed_optimizer)  # the trainer loads model.path, then resumes
    assert manager.load_latest({"actor": resumed})["step"] == 1
    _assert_bitwise(_weights(resumed), expected)
    # The same next step on both: main copies and Adam state came back too, not just the bf16 weights.
    _step(saved, zero=False, seed=2)
    _step(resumed, zero=False, seed=2)
    _assert_bitwise(_weights(resumed), _weights(saved))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_zero_gradient_step_after_resume_of_unstepped_checkpoint(tmp_path, hf_models, distributed_optimizer, dtype):
    """A run stopped during its first step checkpoints an optimizer that has not stepped. Before the fix
    the plain optimizer's checkpoint (no Adam moments; then a step of 0, which megatron-core drops) did
    not load: the resume rejected it (KeyError: 'optimizer.state.exp_avg...', then KeyError: 'step')."""
    saved = _worker(hf_models[0], distributed_optimizer, dtype)  # saved before any step: main copies = loaded weights
    manager = CheckpointManager(tmp_path, CheckpointConfig(keep_last=1))
    manager.save(0, {"actor": saved}, {"step": 0})
    manager.wait()
    expected = _weights(saved)

    resumed = _worker(hf_models[1], distributed_optimizer, dtype)
    assert manager.load_latest({"actor": resumed})["step"] == 0
    _assert_bitwise(_weights(resumed), expected)
    assert _step(resumed, zero=True) == 0.0
    _assert_bitwise(_weights(resumed), expected)


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_recompute_gives_the_same_bf16_step(hf_models, recompute):
    """The GPU recipes recompute activations (`actor.recompute: full`; the CPU demo does not): the same
    bf16 step, bit for bit, with the attention core or whole layers recomputed in the backward."""
    plain, other = _worker(hf_models[0], False, lr=1e-3), _worker(hf_models[0], False, recompute=recompute, lr=1e-3)
    assert other.model.config.recompute_granularity == recompute
    assert _step(other, zero=False) == _step(plain, zero=False) > 0
    _assert_bitwise(_weights(other), _weights(plain))
