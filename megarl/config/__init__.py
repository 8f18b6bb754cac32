"""Typed recipes: the schema (megarl.config.schema: sections, defaults, YAML loading and overrides) and
the checks against the model and the files (megarl.config.checks). `megarl config` is megarl.commands.config.

Errors name the field, the value and the fix, e.g.
  config error: actor.tp=3 does not divide num_attention_heads=14; choose tp from [1, 2, 7, 14]
  config error: unknown key 'rollout.temprature'; did you mean 'rollout.temperature'?
Components never read this package's objects globally: the trainer passes each section to the
component it configures.
"""

from megarl.config.checks import load_config, planning_config_json, validate_semantics
from megarl.config.schema import (
    RENAMED_KEYS, WEIGHT_SYNC_SUBDIR, AlgorithmConfig, CheckpointConfig, Config, ConfigError, CriticConfig, DataConfig,
    EvalConfig, LoggingConfig, ModelConfig, ParallelConfig, RewardConfig, RolloutConfig, RunConfig, Section, SlurmConfig, ToolConfig,
    apply_overrides, build_section, colocated_transport_problem, critic_layout_problem, read_config, read_recipe,
)

__all__ = [
    "RENAMED_KEYS", "WEIGHT_SYNC_SUBDIR", "AlgorithmConfig", "CheckpointConfig", "Config", "ConfigError", "CriticConfig",
    "DataConfig", "EvalConfig", "LoggingConfig", "ModelConfig", "ParallelConfig", "RewardConfig", "RolloutConfig",
    "RunConfig", "Section", "SlurmConfig", "ToolConfig", "apply_overrides", "build_section", "colocated_transport_problem", "critic_layout_problem",
    "load_config", "planning_config_json", "read_config", "read_recipe", "validate_semantics",
]
