"""The built-in CPU demo's pieces: the toy arithmetic task and the toy base model it trains.

Importing it registers the demo's models (`builtin:NAME`) with megarl.model_source; the `megarl` command
does (megarl.cli). Other names are imported lazily, so `python -m megarl.demo.toy_model` runs without importing the
module twice.
"""

from __future__ import annotations

import importlib

from megarl.demo import builtins as _builtins  # noqa: F401  registers the `builtin:` models with megarl.model_source

_EXPORTS = {
    "toy_problems": "megarl.demo.toy_task",
    "format_prompt": "megarl.demo.toy_task",
    "worked_solution": "megarl.demo.toy_task",
    "ToyModelSettings": "megarl.demo.toy_model",
    "build_toy_model": "megarl.demo.toy_model",
    "evaluate_toy_model": "megarl.demo.toy_model",
    "long_problems": "megarl.demo.toy_task",
    "BUILTIN_MODELS": "megarl.demo.builtins",
    "builtin_model_dir": "megarl.demo.builtins",
    "builtin_model_settings": "megarl.demo.builtins",
    "is_toy_source": "megarl.demo.builtins",
    "toy_source_rows": "megarl.demo.builtins",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'megarl.demo' has no attribute {name!r}")
