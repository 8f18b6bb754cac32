"""megarl: zero-RL for math reasoning on Megatron-core, SGLang and Triton."""

from setuptools import find_packages, setup

# Why each dependency is here:
#   torch            - tensors, autograd, torch.distributed (gloo on CPU, NCCL on GPU).
#                      <2.15 admits torch 2.14.1, which sglang 0.5.23 (the `gpu` extra) pins;
#                      CPU machines take the CPU wheel (2.13.0+cpu is tested) from the CPU index.
#   megatron-core    - the actor/critic models with TP/PP and the pipeline schedules.
#                      0.16.1 is the newest for Python 3.11; clusters on 3.12 may take newer.
#   transformers     - HF configs/tokenizers, tiny reference models for parity tests,
#                      the built-in rollout server's generation.
#   safetensors      - lazy, streaming checkpoint I/O for conversion and weight sync.
#   triton           - the fused kernels (compiled on GPU, interpreted on CPU in tests).
#   pydantic, pyyaml - typed, validated recipes.
#   sympy, math-verify - symbolic answer equivalence for the math grader.
#   aiohttp          - async HTTP for the rollout client and the built-in server.
#   rich             - progress bars and tables; matplotlib - training/benchmark plots.
#   wandb            - experiment tracking (offline by default).
INSTALL_REQUIRES = [
    "torch>=2.6,<2.15",
    "megatron-core==0.16.1; python_version<'3.12'",
    "megatron-core>=0.16.1,<0.18; python_version>='3.12'",
    "transformers>=4.51",
    "safetensors>=0.4",
    "triton>=3.2; platform_system=='Linux'",
    "pydantic>=2.6",
    "pyyaml>=6",
    "numpy>=1.26",
    "sympy>=1.12",
    "math-verify>=0.7",
    "aiohttp>=3.9",
    "rich>=13",
    "matplotlib>=3.8",
    "wandb>=0.17",
]

# Ranges, library-style: the tested versions are pinned in megarl/locks/ (CPU and GPU, written by
# tools/lock.sh); tools/check_newest.sh tries the newest releases against them.
EXTRAS = {
    # Everything the CPU tests need beyond the runtime deps.
    # pyarrow/datasets: Parquet and HF `save_to_disk` prompt sets. The SGLang conformance tests import
    # sglang's serializer, process-group helper and ServerArgs with sglang installed --no-deps
    # (`pip install --no-deps sglang==0.5.23`); these are what those imports need besides torch.
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "psutil>=5.9", "pyarrow>=14", "datasets>=2.18", "msgspec>=0.18",
            "orjson", "pybase64", "pyzmq", "pillow", "ipython", "requests", "aiohttp>=3.9", "starlette"],
    "data": ["pyarrow>=14", "datasets>=2.18"],
    # GPU clusters. NVIDIA apex is not on PyPI (the PyPI "apex" is unrelated): build it from
    # source, see README "GPU clusters".
    # sglang==0.5.23 is the version the conformance tests read; it pins torch==2.14.1.
    "gpu": ["transformer-engine[pytorch]>=2.0", "sglang==0.5.23", "sglang-router>=0.1", "flash-attn>=2.6"],
    # Comparisons in the benchmark tools.
    "bench": ["trl>=0.20", "liger-kernel>=0.5"],
}

setup(
    name="megarl",
    version="0.1.0",
    description="Zero-RL trainer for math reasoning: Megatron-core actor/critic, SGLang rollouts, Triton kernels, Slurm.",
    python_requires=">=3.10",
    # megarl's kernels live in the top-level kernels/ folder and install as `megarl.kernels`: that folder
    # has no __init__.py (the package's lies in megarl/kernels/ and adds the folder to its path in a
    # checkout), so nothing named `kernels` ever shadows Hugging Face's `kernels`, which transformers
    # >= 5.25 and sglang import.
    packages=find_packages(include=["megarl", "megarl.*"]),
    package_dir={"megarl.kernels": "kernels"},
    include_package_data=True,
    package_data={"megarl": ["kernels/__init__.py", "locks/*.txt", "datasets/*.jsonl", "datasets/*.md", "datasets/MD5SUMS",
                             "model_configs/*.json", "model_configs/*.md"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["megarl=megarl.cli:main"]},
)
