"""slurm/env.sh creates a missing $MEGARL_VENV from a lock, once, even when a job's nodes source it at
the same time, and refuses with the fix when it has no checkout to install from."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_SH = REPO / "slurm" / "env.sh"


def _source(env_vars: dict, *then: str) -> subprocess.Popen:
    script = f"source {ENV_SH} && " + (" && ".join(then) if then else "true")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # A base Python outside any venv, as on a cluster's login or compute node.
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "venv" not in p)
    return subprocess.Popen(["bash", "-c", script], env={**env, **env_vars}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_missing_venv_is_created_once_from_the_lock(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("idna==3.21  # via test\n")  # a small pure-Python pin (the GPU locks need CUDA hosts)
    venv = tmp_path / "venvs" / "megarl"
    env_vars = {"MEGARL_VENV": str(venv), "MEGARL_HOME": str(REPO), "MEGARL_LOCK_FILE": str(lock)}
    probe = 'python -c "import idna, megarl, sys; print(idna.__version__, megarl.__file__, sys.prefix)"'
    nodes = [_source(env_vars, probe) for _ in range(2)]  # two nodes of one job, at the same time
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
        version, package, prefix = out.split()[-3:]
        assert version == "3.21" and Path(prefix) == venv and Path(package).is_relative_to(REPO), out
    assert (venv / ".megarl-installed").read_text().strip() == str(lock)
    # Installed: a third source only activates it.
    again = _source(env_vars, "echo $VIRTUAL_ENV")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and out.strip() == str(venv), err


def test_without_a_checkout_it_says_what_to_set(tmp_path):
    node = _source({"MEGARL_VENV": str(tmp_path / "v"), "MEGARL_HOME": str(tmp_path)})
    _, err = node.communicate(timeout=120)
    assert node.returncode == 2 and "set MEGARL_HOME to the checkout" in err, err
    assert not (tmp_path / "v").exists()
