"""tools/gpu_check.sh in its CPU dry mode: every step's files, imports, arguments and recipe
overrides check out, and the summary is written as JSON and markdown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def _run(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_checks_every_step(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "gpu_check.json").read_text())
    names = [s["step"] for s in result["steps"]]
    assert names == ["files", "imports", "kernel_tests_collect", "bench_kernels_args", "grpo_recipe", "offload_recipe", "bench_sync_args"]
    assert result["ok"] and all(s["rc"] == 0 for s in result["steps"])
    assert "| grpo_recipe | 0 |" in (out / "gpu_check.md").read_text()


def test_bad_arguments_fail_clearly(tmp_path):
    proc = _run("--dry-run", "--wheels", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "no wheels in" in proc.stderr
    proc = _run("--bogus", tmp_path=tmp_path)
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this would start the real check")
def test_gpu_mode_refuses_without_a_gpu(tmp_path):
    proc = _run("--out", str(tmp_path / "o"), "--python", sys.executable, tmp_path=tmp_path)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
