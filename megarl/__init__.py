"""megarl: zero-RL for math reasoning on Megatron-core actors, SGLang rollouts and Triton kernels."""

__version__ = "0.1.0"
