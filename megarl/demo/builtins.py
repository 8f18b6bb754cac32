"""The names the CPU demo registers: built-in base models (`model.path: builtin:NAME`, the `builtin:`
scheme of megarl.model_source, registered when this module is imported) and generated prompt sets
(`NAME:split[:count]` in `data.train` and `eval.benchmarks`).

The config check, the trainer, the Slurm renderer and `megarl eval` resolve models through
megarl.model_source and never import this module; the `megarl` command loads the demo (megarl.cli):

    builtin:toy-arith        the demo's toy base model (megarl/demo/README.md)
    builtin:toy-arith-long   the long-tailed variant: also pretrained on chain problems, 768 positions
    builtin:toy-tool         the tool demo's model: products of 3-4 digit numbers, some solved with code
    builtin:toy-arith-moe    the MoE demo's model: toy-arith's task as a Qwen3-MoE, 8 experts top-2
    toy-arith:SPLIT[:N]      one-step word problems (`toy_problems`)
    toy-arith-long:SPLIT[:N] 30% chain problems of 2-24 steps, the rest one-step (`long_problems`)
    toy-tool:SPLIT[:N]       "What is 4821 * 739?" (`megarl.demo.toy_tool.tool_problems`)

SPLIT is pretrain, rl_train or heldout; N defaults to 1000 rows (seed 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from megarl.data.sources import GeneratedSet, parse_generated, register_generated_set
from megarl.demo.toy_task import SPLITS, format_prompt, long_problems, toy_problems
from megarl.demo.toy_tool import tool_problems
from megarl.model_source import register_scheme
from megarl.runtime.cache import cache_root

SCHEME = "builtin"
DEFAULT_TOY_ROWS = 1000

# ToyModelSettings overrides of each built-in model (the defaults are the demo's toy-arith).
BUILTIN_MODELS: dict[str, dict] = {
    "toy-arith": {},
    # Chains of up to 24 steps make prompts of up to ~190 tokens and worked solutions of up to ~280:
    # 768 positions leave room for max_new_tokens 384 after a 256-token prompt.
    "toy-arith-long": {"chain_fraction": 0.3, "max_position_embeddings": 768},
    "toy-tool": {"tool_fraction": 0.25},
    # The MoE demo's model (configs/tiny_cpu_moe.yaml): toy-arith's task, tokenizer and shape as a
    # Qwen3-MoE, 8 experts top-2 of width 96 in both layers (the dense toy's FFN 192 active per token).
    "toy-arith-moe": {"num_experts": 8},
}


GENERATORS: dict[str, Callable[..., list[dict]]] = {"toy-arith": toy_problems, "toy-arith-long": long_problems,
                                                   "toy-tool": tool_problems}
TOY_DATASETS = tuple(GENERATORS)
SPLIT_USES = dict(zip(SPLITS, ("pretrain (toy model)", "train", "eval")))  # split -> what it is for


def check_builtin_model(name: str) -> None:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"model.path={SCHEME}:{name!r}: unknown built-in model; available: "
                         f"{', '.join(f'{SCHEME}:{m}' for m in BUILTIN_MODELS)}")


def builtin_model_settings(name: str):
    """The `ToyModelSettings` of a built-in model (its architecture is known without building it)."""
    from megarl.demo.toy_model import ToyModelSettings

    check_builtin_model(name)
    return ToyModelSettings(**BUILTIN_MODELS[name])


def builtin_model_dir(name: str, *, build: bool = True, cache_dir: Path | str | None = None, show_progress: bool = True) -> Path:
    """The HF directory of a built-in model: pretrained and cached on first use when `build`, else
    only where the cache puts it."""
    settings = builtin_model_settings(name)
    if build:
        import megarl.demo.toy_model as toy_model

        return toy_model.build_toy_model(cache_dir, show_progress=show_progress, **BUILTIN_MODELS[name])
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / f"{settings.name}-{settings.cache_key()}"


def builtin_model_cached(name: str) -> bool:
    """Whether a built-in model is already pretrained in the cache (else the next run builds it)."""
    import megarl.demo.toy_model as toy_model

    return toy_model.is_built(builtin_model_dir(name, build=False))


def parse_toy_source(source: str) -> tuple[str, str, int] | None:
    """(dataset, split, rows) of a generated set name like `toy-arith-long:heldout:200`; None when
    `source` names no generated set. Raises ValueError for a known dataset with a bad split or count."""
    parsed = parse_generated(source)
    if parsed is None or parsed[0].name not in GENERATORS:
        return None
    generated, split, count = parsed
    return generated.name, split, count


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
    return GENERATORS[name](split, count, seed=0)


class BuiltinModels:
    """The `builtin:` scheme of megarl.model_source: the demo's toy base models."""

    def names(self) -> list[str]:
        return list(BUILTIN_MODELS)

    def model_dir(self, name: str, *, build: bool) -> Path:
        return builtin_model_dir(name, build=build)

    def hf_config(self, name: str) -> dict:
        """The architecture from the model's settings (no pretraining needed)."""
        from megarl.demo.toy_model import toy_model_config

        settings = builtin_model_settings(name)
        return toy_model_config(settings, vocab_size=settings.tokenizer_vocab_size, eos_id=0, pad_id=1).to_dict()

    def is_built(self, name: str) -> bool:
        return builtin_model_cached(name)


register_scheme(SCHEME, BuiltinModels())
for _name, _generate in GENERATORS.items():  # the toy model's prompt is the problem plus one newline (template "none")
    register_generated_set(GeneratedSet(_name, SPLIT_USES, lambda split, count, make=_generate: make(split, count, seed=0),
                                        prompt=format_prompt, default_rows=DEFAULT_TOY_ROWS))
