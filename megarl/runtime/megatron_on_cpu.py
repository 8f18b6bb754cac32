"""Makes Megatron-core run on CPU (gloo) by covering the few places where it calls CUDA directly.

Applied once per process by `megarl.runtime.distributed.init_runtime` when megarl runs on CPU,
never on GPUs. What it covers, and how:

1. Hard-coded CUDA factories and `torch.cuda.*` calls inside Megatron functions (the default
   causal and sliding-window masks, the pipeline schedules' token counters, grad-norm buffers,
   `torch.cuda.current_device()` in the grad buffers and the global memory buffer, the RNG
   tracker's `torch.cuda.get_rng_state`/`manual_seed`). Each affected Megatron module gets its
   own view of `torch` (`_TorchOnCPU`) whose tensor factories map a CUDA device to the CPU and
   whose `.cuda` namespace answers with the CPU equivalents. The real `torch` is untouched.
2. The model-parallel RNG tracker's state get/set, which read CUDA generator states: replaced
   by CPU-generator versions, so `get_cuda_rng_tracker().fork()` works (dropout and weight init
   under TP use it).
3. The MoE all-to-all dispatcher's host copies of its split sizes (`_host_copy`), and its side
   stream and events (`_StreamOnCPU`): on CPU the sizes are converted in place and nothing waits;
   its gathers and reduce-scatters of uneven slices over the TP group, which gloo lacks
   (`_uneven_gather`, `_uneven_reduce_scatter`).
4. Tensor methods that assume CUDA inside a few Megatron functions: type checks that require
   `torch.cuda.{Float,Half,BFloat16}Tensor` (grad clipping; the construction of the fp16/bf16
   optimizer and of the distributed optimizer, which sort parameters into groups by it) and
   moving `weight.data` to the GPU (syncing tied embeddings between the first and last pipeline
   stage). Those functions run with CPU tensors reporting the CUDA type names and the
   move-to-GPU method returning the tensor itself, only for the duration of the call.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types

import torch

from megarl.runtime.device import GPU_TYPE, is_gpu_device

# Megatron entry points megarl uses; importing them loads every module their code paths reach.
# Each loaded megatron.core module whose source names CUDA gets the CPU view of torch.
_ENTRY_MODULES = (
    "megatron.core.models.gpt",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.distributed",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.tensor_parallel",
    "megatron.core.dist_checkpointing",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.transformer.moe.moe_layer",
    "megatron.core.transformer.moe.token_dispatcher",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.transformer.moe.router",
    "megatron.core.transformer.moe.experts",
)

_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "rand", "randn", "randint", "as_tensor")
_CPU = torch.device("cpu")
_applied = False


def _to_cpu_device(device):
    return _CPU if is_gpu_device(device) else device


class _StreamOnCPU:
    """A CUDA stream or event on CPU: work is already ordered, so waiting and syncing do nothing
    (the MoE all-to-all dispatcher copies its split sizes to the host on a side stream)."""

    def wait_stream(self, other):
        return None

    def record_event(self, *args, **kwargs):
        return self

    def synchronize(self):
        return None


_CPU_STREAM = _StreamOnCPU()


class _CudaNamespaceOnCPU:
    """What `torch.cuda` answers inside patched Megatron modules on a CPU runtime."""

    Stream = staticmethod(lambda *a, **k: _CPU_STREAM)
    current_stream = staticmethod(lambda *a, **k: _CPU_STREAM)
    stream = staticmethod(lambda *a, **k: contextlib.nullcontext())

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device():
        return _CPU

    @staticmethod
    def is_available():
        return False

    @staticmethod
    def synchronize(*args, **kwargs):
        return None

    get_rng_state = staticmethod(lambda *a, **k: torch.get_rng_state())
    set_rng_state = staticmethod(lambda state, *a, **k: torch.set_rng_state(state))
    manual_seed = staticmethod(lambda seed: torch.manual_seed(seed))
    manual_seed_all = staticmethod(lambda seed: torch.manual_seed(seed))


class _TorchOnCPU(types.ModuleType):
    """A view of `torch` whose tensor factories place CUDA-device requests on the CPU."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CudaNamespaceOnCPU()
        for name in _FACTORIES:
            setattr(self, name, self._factory(getattr(torch, name)))

    @staticmethod
    def _factory(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _to_cpu_device(kwargs["device"])
            return fn(*args, **kwargs)

        return wrapper

    def __getattr__(self, name):
        return getattr(torch, name)


_ORIGINAL_TENSOR_TYPE = torch.Tensor.type
_CPU_TO_GPU_TYPE_NAME = {
    "torch.FloatTensor": f"torch.{GPU_TYPE}.FloatTensor",
    "torch.HalfTensor": f"torch.{GPU_TYPE}.HalfTensor",
    "torch.BFloat16Tensor": f"torch.{GPU_TYPE}.BFloat16Tensor",
}


def _type_as_gpu_names(self, *args, **kwargs):
    name = _ORIGINAL_TENSOR_TYPE(self, *args, **kwargs)
    return _CPU_TO_GPU_TYPE_NAME.get(name, name) if not args and not kwargs else name


_ORIGINAL_TENSOR_TO_GPU = getattr(torch.Tensor, GPU_TYPE)


def _stay_on_cpu(self, *args, **kwargs):
    return self


@contextlib.contextmanager
def _tensors_act_as_gpu():
    torch.Tensor.type = _type_as_gpu_names
    setattr(torch.Tensor, GPU_TYPE, _stay_on_cpu)
    try:
        yield
    finally:
        torch.Tensor.type = _ORIGINAL_TENSOR_TYPE
        setattr(torch.Tensor, GPU_TYPE, _ORIGINAL_TENSOR_TO_GPU)


def _run_with_tensors_as_gpu(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _tensors_act_as_gpu():
            return fn(*args, **kwargs)

    return wrapper


def _get_rng_state_cpu(device=None, clone=False, graph_safe=False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _set_rng_state_cpu(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _host_copy(tensor, as_numpy=False, record_stream=False):
    """megatron's `maybe_move_tensor_to_cpu` for tensors already on the CPU: the MoE all-to-all
    dispatcher asks for its split sizes as NumPy arrays (what `all_to_all_single` accepts); the
    original converts only tensors it moves from a GPU, leaving CPU tensors that gloo's binding refuses."""
    if torch.is_tensor(tensor) and as_numpy:
        return tensor.numpy()
    return tensor


def _uneven_gather(original):
    """Megatron's `_gather_along_first_dim` with gloo: gloo's all_gather needs equal sizes, so a
    gather of uneven slices (the MoE dispatcher's under TP) pads each slice to the largest, gathers,
    and trims. Equal gathers go to the original."""

    @functools.wraps(original)
    def gather(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or group.size() == 1:
            return original(input_, group, output_split_sizes, use_global_buffer)
        sizes = [int(n) for n in output_split_sizes]
        padded = input_.new_zeros((max(sizes),) + tuple(input_.shape[1:]))
        padded[: input_.shape[0]] = input_
        parts = [torch.empty_like(padded) for _ in sizes]
        torch.distributed.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)

    return gather


def _uneven_reduce_scatter(original):
    """Megatron's `_reduce_scatter_along_first_dim` with gloo, for uneven slices: gloo has no
    list reduce-scatter, so it all-reduces the whole tensor and keeps this rank's slice."""

    @functools.wraps(original)
    def reduce_scatter(input_, group, input_split_sizes=None, use_global_buffer=False):
        if input_split_sizes is None or group.size() == 1:
            return original(input_, group, input_split_sizes, use_global_buffer)
        total = input_.contiguous().clone()
        torch.distributed.all_reduce(total, group=group)
        return torch.split(total, [int(n) for n in input_split_sizes], dim=0)[group.rank()].contiguous()

    return reduce_scatter


def _names_cuda(module) -> bool:
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return False
    with open(path, encoding="utf-8") as f:
        return GPU_TYPE in f.read()


def apply() -> None:
    """Install the CPU adaptations (idempotent). Call only when megarl runs on CPU."""
    global _applied
    if _applied:
        return
    for name in _ENTRY_MODULES:
        importlib.import_module(name)
    cpu_torch = _TorchOnCPU()
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(module, "torch", None) is torch and _names_cuda(module):
            module.torch = cpu_torch

    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random._get_cuda_rng_state = _get_rng_state_cpu
    random._set_cuda_rng_state = _set_rng_state_cpu

    clip_grads = importlib.import_module("megatron.core.optimizer.clip_grads")
    optimizer = importlib.import_module("megatron.core.optimizer.optimizer")
    wrapped_clip = _run_with_tensors_as_gpu(clip_grads.clip_grad_by_total_norm_fp32)
    clip_grads.clip_grad_by_total_norm_fp32 = wrapped_clip
    optimizer.clip_grad_by_total_norm_fp32 = wrapped_clip

    # The optimizers sort parameters into fp32 / fp16 / bf16 groups by CUDA type name (bf16 and fp16
    # models get fp32 main copies); on CPU every parameter would be refused or left unsorted.
    distrib = importlib.import_module("megatron.core.optimizer.distrib_optimizer")
    for cls in (optimizer.Float16OptimizerWithFloat16Params, distrib.DistributedOptimizer):
        cls.__init__ = _run_with_tensors_as_gpu(cls.__init__)
    mappings = importlib.import_module("megatron.core.tensor_parallel.mappings")
    mappings._gather_along_first_dim = _uneven_gather(mappings._gather_along_first_dim)
    mappings._reduce_scatter_along_first_dim = _uneven_reduce_scatter(mappings._reduce_scatter_along_first_dim)
    dispatcher = importlib.import_module("megatron.core.transformer.moe.token_dispatcher")
    dispatcher.maybe_move_tensor_to_cpu = _host_copy
    language_module = importlib.import_module("megatron.core.models.common.language_module.language_module")
    setup = language_module.LanguageModule.setup_embeddings_and_output_layer
    language_module.LanguageModule.setup_embeddings_and_output_layer = _run_with_tensors_as_gpu(setup)
    _applied = True
