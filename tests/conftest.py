"""Shared pytest setup: CPU-safe environment defaults and tiny HF model fixtures."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

import megarl.demo  # noqa: E402,F401  the `builtin:` models, as the `megarl` command registers them (megarl.cli)


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory):
    """{arch: path} of tiny random HF models for qwen2, llama and mistral."""
    from tiny_models import TINY_CONFIGS, make_tiny_hf

    root = tmp_path_factory.mktemp("tiny_hf")
    return {arch: make_tiny_hf(arch, root / arch) for arch in TINY_CONFIGS}


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """A small toy base model with a tokenizer (quick pretraining; for mechanics, not accuracy)."""
    from megarl.demo.toy_model import build_toy_model

    return build_toy_model(
        tmp_path_factory.mktemp("toy_cache"), steps=40, hidden_size=64, intermediate_size=128, show_progress=False
    )


