"""`megarl doctor`: passes on the tested install, names a package at another version than the lock's,
and fails (naming the fix) on a module shadowed by another path or overwritten by another package."""

import base64
import hashlib
import importlib
import json
import subprocess
import sys

import pytest

from megarl import doctor


def test_doctor_passes_on_this_install(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megarl.cli", "doctor", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    failed = [f for f in report["findings"] if f["level"] == "fail"]
    assert proc.returncode == 0 and report["ok"] and not failed, failed or proc.stderr[-2000:]
    checks = {f["check"] for f in report["findings"]}
    assert {"python", "shadowing", "import", "gpu", "slurm", "sandbox", "cache"} <= checks, checks


def test_a_package_at_another_version_than_the_lock_is_named(tmp_path):
    lock = tmp_path / "cpu.txt"
    text = doctor.LOCKS.joinpath("cpu.txt").read_text()
    installed = doctor.installed_versions()["transformers"]
    changed = "\n".join("transformers==0.0.1  # via megarl" if line.startswith("transformers==") else line
                        for line in text.splitlines())
    lock.write_text(changed)
    findings = doctor.check_versions(lock)
    named = [f for f in findings if "transformers" in f.detail]
    assert named and named[0].level == "warn", findings
    assert f"transformers {installed} differs from the lock's 0.0.1" in named[0].detail
    assert "pip install transformers==0.0.1" in named[0].fix
    # The lock as shipped names no such difference for transformers.
    assert not [f for f in doctor.check_versions(doctor.LOCKS / "cpu.txt") if "transformers" in f.detail]


def test_every_lock_parses_and_pins_the_stack():
    cpu = doctor.read_lock(doctor.LOCKS / "cpu.txt")
    assert cpu["torch"] == "2.13.0" and cpu["megatron-core"] == "0.16.1" and "pytest" in cpu
    assert not [name for name in cpu if name.startswith("nvidia-")], "the CPU lock must not pull CUDA libraries"
    for name in ("gpu-py311.txt", "gpu-py312.txt"):
        gpu = doctor.read_lock(doctor.LOCKS / name)
        assert gpu["torch"] == "2.14.1" and gpu["sglang"] == "0.5.23", name
        assert {"transformer-engine", "flash-attn", "megatron-core", "sglang-router"} <= set(gpu), name


@pytest.fixture
def on_path(monkeypatch):
    """Put a folder first on sys.path for this test, as a working directory or PYTHONPATH entry would be."""
    def put(folder):
        monkeypatch.syspath_prepend(str(folder))
        importlib.invalidate_caches()
    yield put
    importlib.invalidate_caches()


def test_a_kernels_folder_that_shadows_hugging_faces_fails_with_the_fix(tmp_path, on_path):
    """Found from sys.path even when this process imported HF's `kernels` already (transformers does;
    before, the spec cached in sys.modules hid the shadow)."""
    importlib.import_module("kernels")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    on_path(tmp_path)
    found = [f for f in doctor.check_shadowing() if f.level == "fail"]
    assert len(found) == 1 and found[0].check == "shadowed", found
    assert "`import kernels` finds" in found[0].detail and str(tmp_path / "kernels") in found[0].fix


def _fake_distribution(site, name, init_text, recorded_text):
    """A package as pip leaves it, whose RECORD hashes `recorded_text` while the file holds `init_text`."""
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(init_text)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded_text.encode()).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"{name}/__init__.py,sha256={digest},{len(recorded_text)}\n{name}-1.0.dist-info/METADATA,,\n")


def test_a_package_file_overwritten_by_another_install_fails(tmp_path, on_path):
    _fake_distribution(tmp_path, "megarl_doctor_probe_a", "x = 1\n", "x = 1\n")
    _fake_distribution(tmp_path, "megarl_doctor_probe_b", "# written over by another wheel\n", "y = 2\n")
    on_path(tmp_path)
    failed = [f for f in doctor.check_shadowing() if f.level == "fail"]
    assert [f.check for f in failed] == ["overwritten"], failed
    assert "megarl_doctor_probe_b" in failed[0].detail and "--force-reinstall megarl_doctor_probe_b" in failed[0].fix
