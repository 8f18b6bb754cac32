"""Where megarl keeps what it builds once and reuses (the demo's pretrained toy models).

The root is `$MEGARL_CACHE_DIR` when set, else `$XDG_CACHE_HOME/megarl`, else `~/.cache/megarl`;
read when asked, so a variable set after import still counts.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MEGARL_CACHE_DIR"


def cache_root() -> Path:
    """The cache root directory (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "megarl"
    return Path.home() / ".cache" / "megarl"
