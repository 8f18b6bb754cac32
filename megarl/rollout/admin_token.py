"""Admin tokens of rollout servers: made per run, passed by environment or a 0600 file, never argv.

The token guards the servers' weight-update and control endpoints (docs/security.md). A command
line is readable by every local user (`ps`, /proc/PID/cmdline), so megarl hands a token to a
server either in the environment (`$MEGARL_SERVE_TOKEN`, readable only by the same user and root)
or in a file only its owner can read: megarl's built-in server takes `--token-file`, SGLang takes
`--config FILE` (a YAML file with `admin_api_key`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

TOKEN_ENV = "MEGARL_SERVE_TOKEN"


def new_token() -> str:
    """A fresh per-run admin token (128 random bits, hex)."""
    return secrets.token_hex(16)


def write_private_file(path: str | Path, text: str) -> Path:
    """Create `path` with mode 0600 (it must not exist yet) and write `text` into it."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def read_token_file(path: str | Path) -> str:
    """The token in `path`, refusing a file that other users can read (one-line errors naming the fix)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise ValueError(f"cannot read the token file {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"token file {path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
                         f"run: chmod 600 {path}")
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty; write the token into it")
    return token


def sglang_admin_key_config(token: str, directory: str | Path) -> Path:
    """A 0600 YAML file for SGLang's `--config`, holding only `admin_api_key`, in `directory`."""
    path = Path(directory) / f"sglang_admin_{secrets.token_hex(4)}.yaml"
    # the key as spelled on the command line: SGLang turns each YAML key into "--KEY VALUE"
    return write_private_file(path, f"admin-api-key: {json.dumps(token)}\n")  # a JSON string is a YAML string


@contextlib.contextmanager
def sglang_admin_key_file(token: str | None) -> Iterator[str | None]:
    """The path of a `sglang_admin_key_config` file for `token` in a private (0700) temporary
    directory, removed with the directory on exit; None when there is no token."""
    if not token:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="megarl-sglang-key-")  # mode 0700
    try:
        yield str(sglang_admin_key_config(token, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
