"""The names the CPU demo registers: built-in base models (`model.path: builtin:NAME`) and generated
prompt sets (`NAME:split[:count]` in `data.train` and `eval.benchmarks`).

One table each, so the config check, the trainer, the Slurm renderer and the data loader all read
the same names instead of testing for them one by one:

    builtin:toy-arith        the demo's toy base model (megarl/demo/README.md)
    builtin:toy-arith-long   the long-tailed variant: also pretrained on chain problems, 768 positions
    builtin:toy-tool         the tool demo's model: products of 3-4 digit numbers, some solved with code
    toy-arith:SPLIT[:N]      one-step word problems (`toy_problems`)
    toy-arith-long:SPLIT[:N] 30% chain problems of 2-24 steps, the rest one-step (`long_problems`)
    toy-tool:SPLIT[:N]       "What is 4821 * 739?" (`megarl.demo.toy_tool.tool_problems`)

SPLIT is pretrain, rl_train or heldout; N defaults to 1000 rows (seed 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from megarl.runtime.cache import cache_root

BUILTIN_PREFIX = "builtin:"
DEFAULT_TOY_ROWS = 1000

# ToyModelSettings overrides of each built-in model (the defaults are the demo's toy-arith).
BUILTIN_MODELS: dict[str, dict] = {
    "toy-arith": {},
    # Chains of up to 24 steps make prompts of up to ~190 tokens and worked solutions of up to ~280:
    # 768 positions leave room for max_new_tokens 384 after a 256-token prompt.
    "toy-arith-long": {"chain_fraction": 0.3, "max_position_embeddings": 768},
    "toy-tool": {"tool_fraction": 0.25},
}


def _dataset_generators() -> dict[str, Callable[..., list[dict]]]:
    from megarl.demo.toy_task import long_problems, toy_problems
    from megarl.demo.toy_tool import tool_problems

    return {"toy-arith": toy_problems, "toy-arith-long": long_problems, "toy-tool": tool_problems}


TOY_DATASETS = ("toy-arith", "toy-arith-long", "toy-tool")


def builtin_name(path: str) -> str | None:
    """`toy-arith-long` for `builtin:toy-arith-long`; None for anything else (a directory path)."""
    return path[len(BUILTIN_PREFIX):] if path.startswith(BUILTIN_PREFIX) else None


def check_builtin_model(name: str) -> None:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"model.path={BUILTIN_PREFIX + name!r}: unknown built-in model; available: "
                         f"{', '.join(BUILTIN_PREFIX + m for m in BUILTIN_MODELS)}")


def builtin_model_settings(name: str):
    """The `ToyModelSettings` of a built-in model (its architecture is known without building it)."""
    from megarl.demo.toy_model import ToyModelSettings

    check_builtin_model(name)
    return ToyModelSettings(**BUILTIN_MODELS[name])


def builtin_model_dir(name: str, *, build: bool = True, cache_dir: Path | str | None = None, show_progress: bool = True) -> Path:
    """The HF directory of a built-in model: pretrained and cached on first use when `build`, else
    only where the cache puts it."""
    from megarl.demo import toy_model

    settings = builtin_model_settings(name)
    if build:
        return toy_model.build_toy_model(cache_dir, show_progress=show_progress, **BUILTIN_MODELS[name])
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / f"{settings.name}-{settings.cache_key()}"


def builtin_model_cached(name: str) -> bool:
    """Whether a built-in model is already pretrained in the cache (else the next run builds it)."""
    from megarl.demo import toy_model

    return toy_model.is_built(builtin_model_dir(name, build=False))


def parse_toy_source(source: str) -> tuple[str, str, int] | None:
    """(dataset, split, rows) of a generated set name like `toy-arith-long:heldout:200`; None when
    `source` names no generated set. Raises ValueError for a known dataset with a bad split or count."""
    name, sep, rest = source.partition(":")
    if not sep or name not in TOY_DATASETS:
        return None
    from megarl.demo.toy_task import SPLITS

    parts = rest.split(":")
    split = parts[0]
    if split not in SPLITS or len(parts) > 2:
        raise ValueError(f"{source!r}: write {name}:SPLIT[:COUNT] with SPLIT one of {', '.join(SPLITS)}")
    try:
        count = int(parts[1]) if len(parts) > 1 else DEFAULT_TOY_ROWS
    except ValueError:
        raise ValueError(f"{source!r}: the count {parts[1]!r} is not a whole number") from None
    if count < 1:
        raise ValueError(f"{source!r}: the count must be >= 1")
    return name, split, count


def is_toy_source(source: str) -> bool:
    try:
        return parse_toy_source(source) is not None
    except ValueError:
        return False


def toy_source_rows(source: str) -> list[dict]:
    """The rows of a generated set (`{"id", "problem", "answer", ...}`, problem text unformatted)."""
    parsed = parse_toy_source(source)
    if parsed is None:
        raise ValueError(f"{source!r} is not a generated toy set; use one of {', '.join(d + ':SPLIT[:COUNT]' for d in TOY_DATASETS)}")
    name, split, count = parsed
    return _dataset_generators()[name](split, count, seed=0)
