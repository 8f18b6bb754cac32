"""The recipe's checks against the world: layouts against the model's architecture, files that must
exist, the world size, the algorithm's requirements across sections. They import the model code
(torch), so megarl.config.schema stays quick; `load_config` reads and checks a recipe.
"""

from __future__ import annotations

from pathlib import Path

from megarl import model_source
from megarl.algorithms.registry import algorithm_names, get_algorithm
from megarl.config.schema import Config, ConfigError, colocated_transport_problem, critic_layout_problem, read_config
from megarl.model_configs.experts import Experts, check_expert_world, check_experts
from megarl.model_source import ModelSourceError
from megarl.rollout.engines import get_engine


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, check_files: bool = True,
                weights: bool = True) -> Config:
    """Load a YAML recipe (and its `base:` chain), apply `key=value` overrides, validate. Raises ConfigError.
    `weights=False` (planning a job): model.path may be missing when model.config gives the architecture."""
    cfg = read_config(path, overrides)
    validate_semantics(cfg, check_files=check_files, weights=weights)
    return cfg


def planning_config_json(cfg: Config, model_dir: str | Path | None = None) -> Path | None:
    """The config.json that describes the model: beside the weights (`model_dir`, else model.path) when
    they are here, else model.config (a shipped config or a path); None when neither is known."""
    from megarl.model_configs import model_config_path

    here = Path(model_dir if model_dir is not None else cfg.model.path) / "config.json"
    if here.is_file():
        return here
    if cfg.model.config is None:
        return None
    try:
        return model_config_path(cfg.model.config)
    except FileNotFoundError as err:
        raise ConfigError(f"model.config: {err}") from None


def validate_semantics(cfg: Config, *, check_files: bool = True, world_size: int | None = None, weights: bool = True) -> None:
    """Cross-field checks: layouts against the model, files that must exist, world size."""
    for section in ("actor", "critic"):
        par = getattr(cfg, section)
        if world_size is not None and world_size % (par.tp * par.pp):
            raise ConfigError(
                f"world size {world_size} is not a multiple of {section}.tp*{section}.pp = {par.tp * par.pp}; "
                f"launch a multiple of {par.tp * par.pp} processes"
            )
        if world_size is not None:
            try:
                check_expert_world(par.ep, par.tp, par.pp, world_size, field=section)
            except ValueError as err:
                raise ConfigError(str(err)) from None
    if problem := critic_layout_problem(cfg):
        raise ConfigError(problem)
    algo = get_algorithm(cfg.algorithm.name)
    for key, value in algo.requires.items():
        if getattr(cfg.algorithm, key) != value:
            raise ConfigError(f"algorithm.name={algo.name} needs algorithm.{key}={value} ({algo.source})")
    if cfg.algorithm.kl_in_reward and not algo.estimator.token_rewards:
        token_level = ", ".join(a for a in algorithm_names() if get_algorithm(a).estimator.token_rewards)
        raise ConfigError(
            f"algorithm.kl_in_reward=true needs token-level rewards ({token_level}), not {cfg.algorithm.name}; "
            "use the KL loss (kl_in_reward=false) with it"
        )
    if cfg.algorithm.whiten_advantages and algo.estimator.whitens:
        raise ConfigError(
            f"algorithm.whiten_advantages=true: {algo.name}'s estimator ({algo.estimator.name}) whitens already; remove the setting"
        )
    if cfg.rollout.off_policy and cfg.rollout.colocate:
        raise ConfigError(
            f"rollout.mode={cfg.rollout.mode} needs the servers to keep generating while the trainer computes, but "
            "rollout.colocate=true gives their GPUs to training; set rollout.mode=sync or rollout.colocate=false"
        )
    problem = colocated_transport_problem(cfg.rollout.transport, colocate=cfg.rollout.colocate,
                                          gpus=get_engine(cfg.rollout.engine).needs_gpus)
    if problem:
        raise ConfigError(problem)
    if cfg.rollout.partial and cfg.rollout.mode != "async":
        raise ConfigError(f"rollout.partial=true applies to rollout.mode=async, not {cfg.rollout.mode}; "
                          "set rollout.mode=async or rollout.partial=false")
    if cfg.rollout.n < algo.min_n:
        raise ConfigError(
            f"rollout.n={cfg.rollout.n}: group baselines need at least {algo.min_n} samples per prompt "
            f"(algorithm.name={algo.name} is group-based)"
        )
    if not check_files:
        return
    from megarl.data.sources import missing_path

    for field, items in (("data.train", cfg.data.train), ("data.eval_sets", cfg.data.eval_sets),
                         ("eval.benchmarks", cfg.eval.benchmarks)):
        for i, item in enumerate(items):
            if missing_path(item):
                raise ConfigError(f"{field}[{i}]={item!r} does not exist; give an existing JSONL/Parquet path "
                                  "or a shipped set name (`megarl data list`)")
    from megarl.models.spec import ModelSpec  # imports torch: after the quick checks

    try:
        architecture = _architecture(cfg, weights)
        spec = ModelSpec.from_hf(architecture)
        experts = Experts.from_hf(architecture) if isinstance(architecture, dict) else Experts.from_hf_path(architecture)
    except ConfigError:
        raise
    except ModelSourceError as err:
        raise ConfigError(str(err)) from None
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"model.path={cfg.model.path!r}: {err}") from None
    sections = ["actor"] + (["critic"] if cfg.uses_critic else [])
    for section in sections:
        par = getattr(cfg, section)
        try:
            check_experts(experts, par.ep, field=section)  # the expert counts, with the valid ep values named
            spec.check_layout(par.tp, par.pp, field=section, ep=par.ep, sequence_parallel=par.sequence_parallel)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def _architecture(cfg: Config, weights: bool):
    """The model's config.json (a directory, or a scheme model's contents) for the layout checks."""
    if model_source.split_scheme(cfg.model.path) is None and not Path(cfg.model.path).exists():
        if weights or cfg.model.config is None:
            fix = "" if weights else " (or set model.config to plan without the weights: a config megarl ships or a config.json)"
            raise ConfigError(f"model.path={cfg.model.path!r} does not exist; give an HF model directory{fix}")
        return planning_config_json(cfg)  # planning only: the architecture from model.config
    return model_source.architecture(cfg.model.path, tokenizer=cfg.model.tokenizer)
