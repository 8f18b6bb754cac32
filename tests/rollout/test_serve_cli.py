"""`megarl serve` command line."""

import subprocess
import sys


def test_serve_help_has_an_example():
    out = subprocess.run([sys.executable, "-m", "megarl.cli", "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--model" in out.stdout and "examples:\n  megarl serve --model" in out.stdout


def test_serve_rejects_a_missing_model_dir(tmp_path):
    out = subprocess.run([sys.executable, "-m", "megarl.cli", "serve", "--model", str(tmp_path / "none"), "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "does not exist" in out.stderr
