"""megarl's kernels import as `megarl.kernels` only; Hugging Face's `kernels` (a dependency of
transformers >= 5.25) is what `import kernels` finds, from the repository root and from anywhere else.

Before the rename, megarl installed a top-level `kernels` package: from the repository root
transformers imported megarl's copy (`cannot import name 'CUDAProperties' from 'kernels'`), and from a
console script megarl imported Hugging Face's (`cannot import name 'kl_penalty' from 'kernels'`).
"""

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What a user's process does first: import HF's kernels and build a model with transformers, then
# import megarl's kernels and the trainer's modules that use them.
PROBE = """
import json, importlib.util, kernels, transformers
from transformers import Qwen2Config, Qwen2ForCausalLM
Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
import megarl.kernels, megarl.kernels.logprob, megarl.train.stages.advantages
from megarl.kernels import kl_penalty
print(json.dumps({"kernels": kernels.__file__, "has_hf_api": hasattr(kernels, "get_kernel"),
                  "megarl_kernels": megarl.kernels.logprob.__file__}))
"""


def _hugging_faces_kernels() -> Path:
    """Where the installed `kernels` distribution put its __init__.py (the venv may lie inside the repo)."""
    return Path(metadata.distribution("kernels").locate_file("kernels/__init__.py")).resolve()


def _probe(cwd: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hugging_face_kernels_is_installed():
    """The lock installs HF's kernels with transformers; without it the checks below would prove nothing."""
    assert metadata.version("kernels"), "Hugging Face's `kernels` is not installed"


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_kernels_is_hugging_faces_and_megarl_kernels_is_megarls(where, tmp_path):
    cwd = REPO if where == "repo_root" else tmp_path
    result = _probe(cwd, "-c", PROBE)
    assert result["has_hf_api"], result
    assert Path(result["kernels"]).resolve() == _hugging_faces_kernels(), result
    assert Path(result["megarl_kernels"]).resolve() == REPO / "kernels" / "logprob.py", result


def test_python_m_from_the_repo_root_sees_hugging_faces_kernels(tmp_path):
    """`python -m pkg` puts the working directory first on sys.path, as tests and tools do."""
    package = tmp_path / "probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(PROBE)
    proc = subprocess.run([sys.executable, "-m", "probe_pkg"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["kernels"]).resolve() == _hugging_faces_kernels(), result


def test_nothing_at_the_repo_root_is_a_regular_kernels_package():
    """A regular package named `kernels` anywhere on sys.path before site-packages would shadow HF's."""
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert not (REPO / "tests" / "kernels" / "__init__.py").exists()


def test_the_wheel_holds_the_kernels_as_megarl_kernels_only(tmp_path):
    """A non-editable install: the modules of kernels/ land in megarl/kernels/ beside its __init__.py,
    and nothing named `kernels` is written to site-packages (where it would overwrite HF's)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("megarl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    kernel_files = sorted(n for n in names if "kernels" in n.split("/")[0:2])
    expected = sorted(f"megarl/kernels/{p.name}" for p in (REPO / "kernels").glob("*.py")) + ["megarl/kernels/__init__.py"]
    assert kernel_files == sorted(expected), kernel_files
    assert not [n for n in names if n.startswith("kernels/")]
    assert {"megarl/locks/cpu.txt", "megarl/locks/gpu-py311.txt", "megarl/locks/gpu-py312.txt"} <= set(names)
