"""Conversion safety: stored dtypes checked against config.json (a header edited from F32 to I32
is refused), partial outputs of killed conversions removed on the
next run (a live one refused), and a full disk reported in one line."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megarl.checkpoint import CheckpointFormatError, hf_to_torch_dist

TOOLS = Path(__file__).parents[2] / "tools"


def _convert(hf, out):
    """`tools/convert_hf_to_megatron.py` as a user runs it: (exit status, stderr)."""
    proc = subprocess.run([sys.executable, str(TOOLS / "convert_hf_to_megatron.py"), "--hf-dir", str(hf), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def _retype(path: Path, tensor: str, old: str, new: str) -> None:
    """Edit one tensor's dtype in a safetensors header in place (same-length names: nothing moves)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header[tensor]["dtype"] == old
    header[tensor]["dtype"] = new
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    path.write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n:])


def test_hf_header_with_f32_changed_to_i32_is_refused(hf_models, tmp_path):
    hf = shutil.copytree(hf_models["qwen2"], tmp_path / "hf")
    name = "model.layers.0.mlp.up_proj.weight"
    _retype(hf / "model.safetensors", name, "F32", "I32")
    out = tmp_path / "out"
    with pytest.raises(CheckpointFormatError, match=rf"model.safetensors: tensor '{name}' is stored as I32, expected "
                                                    r"config.json's dtype float32"):
        hf_to_torch_dist(hf, out)
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))
    rc, err = _convert(hf, out)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "is stored as I32" in err, err


def test_hf_weights_in_another_float_dtype_than_config_declares_are_refused(hf_models, tmp_path):
    hf = shutil.copytree(hf_models["llama"], tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    key = "torch_dtype" if "torch_dtype" in config else "dtype"
    config[key] = "bfloat16"
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match=r"is stored as F32, expected config.json's dtype bfloat16"):
        hf_to_torch_dist(hf, tmp_path / "out")


def test_partial_output_of_a_killed_conversion_is_removed_next_time(hf_models, tmp_path, capsys):
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from megarl.checkpoint.format import atomic_output_dir
        with atomic_output_dir({str(out)!r}) as tmp:
            (tmp / "half_written.safetensors").write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "writing"
        partial = tmp_path / f"out.tmp-{job.pid}"
        assert partial.is_dir()
        with pytest.raises(FileExistsError, match=rf"another process \(pid {job.pid}\) is writing it now"):
            hf_to_torch_dist(hf_models["qwen2"], out)  # a live writer's partial stays
        assert partial.is_dir()
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert partial.is_dir()  # SIGKILL: nothing cleaned up
    legacy = tmp_path / "out.tmp-4000000"  # an older megarl's partial (no lock file)
    legacy.mkdir()
    capsys.readouterr()
    hf_to_torch_dist(hf_models["qwen2"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    err = capsys.readouterr().err
    assert f"removed {partial}, a partial output left by a process that no longer runs" in err
    assert f"removed {legacy}," in err


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 256 KiB tmpfs (needs root to mount; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_is_one_line_and_leaves_nothing(hf_models, tiny_filesystem):
    hf = hf_models["qwen2_05b_shaped"]
    assert (hf / "model.safetensors").stat().st_size > 2 * 256 * 1024
    out = tiny_filesystem / "out"
    rc, err = _convert(hf, out)
    assert rc == 1
    assert err.strip().splitlines() == [
        f"convert_hf_to_megatron.py: error: no space left on device while writing {out}; the partial output was "
        "removed: free space (or quota) there, or choose another --out"], err
    assert os.listdir(tiny_filesystem) == []
