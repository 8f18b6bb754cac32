"""The published config.json of each model megarl's cluster recipes name, without the weights: enough
to plan a job (`megarl submit --dry-run`: layout checks and the per-GPU memory table) on a machine
that does not hold the model yet. A recipe names one in `model.config`; README.md gives the sources.
"""

from __future__ import annotations

import difflib
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent


def shipped_model_configs() -> list[str]:
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.json"))


def model_config_path(name: str) -> Path:
    """A shipped config by name (`Qwen2.5-32B`), or a config.json / model directory path."""
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return path
    shipped = CONFIGS_DIR / f"{name}.json"
    if shipped.is_file():
        return shipped
    close = difflib.get_close_matches(name, shipped_model_configs(), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise FileNotFoundError(f"{name!r} is neither a config.json (or a directory holding one) nor a config megarl ships; "
                            f"{hint}shipped: {', '.join(shipped_model_configs())}")
