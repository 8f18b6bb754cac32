"""`megarl config RECIPE [key=value ...]`: load, override and validate a recipe; print it resolved."""

from __future__ import annotations

import yaml

from megarl.config.checks import load_config_for_cli


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
