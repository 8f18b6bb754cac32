"""`megarl config RECIPE [key=value ...]`: load, override and validate a recipe; print it resolved."""

from __future__ import annotations

import sys

import yaml

from megarl.config import Config, ConfigError, load_config


def load_config_for_cli(argv: list[str]) -> Config | None:
    """`RECIPE [key=value ...]` from a command line; on a bad recipe prints one line and returns None."""
    try:
        return load_config(argv[0], argv[1:])
    except ConfigError as err:
        print(f"megarl: config error: {err}", file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    """`megarl config RECIPE [key=value ...]`: print the resolved, validated recipe."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: megarl config RECIPE.yaml [key=value ...]\n\nexample: megarl config configs/tiny_cpu.yaml actor.tp=2 rollout.n=8")
        return 0
    cfg = load_config_for_cli(argv)
    if cfg is None:
        return 2
    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return 0
