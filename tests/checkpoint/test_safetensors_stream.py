"""The streaming safetensors writer and reader against the safetensors library."""

import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megarl.checkpoint.safetensors_stream import CheckpointFormatError, SafetensorsReader, SafetensorsWriter

TENSORS = {
    "a.weight": torch.randn(5, 3).to(torch.bfloat16),
    "b": torch.randn(7),
    "c.half": torch.randn(2, 3, 4).half(),
    "d.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    "e.empty": torch.empty(0, 4),
}


def _write(path, tensors):
    with SafetensorsWriter(path, [(n, t.dtype, t.shape) for n, t in tensors.items()]) as w:
        for n, t in tensors.items():
            w.write(n, t)


def test_written_file_reads_back_with_safetensors(tmp_path):
    path = tmp_path / "x.safetensors"
    _write(path, TENSORS)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(TENSORS)
        assert f.metadata() == {"format": "pt"}
        for name, t in TENSORS.items():
            assert torch.equal(f.get_tensor(name), t) and f.get_tensor(name).dtype == t.dtype


def test_reader_matches_safetensors_written_file(tmp_path):
    path = tmp_path / "y.safetensors"
    save_file(TENSORS, str(path))
    reader = SafetensorsReader(path)
    for name, t in TENSORS.items():
        got = reader.get(name)
        assert got.dtype == t.dtype and torch.equal(got, t)
    # Non-contiguous input (a column slice) is written as its values.
    t = torch.randn(4, 6)[:, 1:4]
    _write(tmp_path / "z.safetensors", {"t": t})
    assert torch.equal(SafetensorsReader(tmp_path / "z.safetensors").get("t"), t)


def test_writer_rejects_misuse(tmp_path):
    entries = [("a", torch.float32, (2,)), ("b", torch.float32, (3,))]
    w = SafetensorsWriter(tmp_path / "m.safetensors", entries)
    with pytest.raises(CheckpointFormatError, match="expected tensor 'a' next, got 'b'"):
        w.write("b", torch.zeros(3))
    with pytest.raises(CheckpointFormatError, match="declared torch.float32 \\(2,\\)"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(CheckpointFormatError, match="not written: \\['b'\\]"):
        w.close()


def test_reader_rejects_corrupt_and_truncated_files(tmp_path):
    path = tmp_path / "t.safetensors"
    _write(path, TENSORS)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointFormatError, match="trunc.safetensors: header needs .* the file is truncated"):
        SafetensorsReader(tmp_path / "trunc.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointFormatError, match="garbage.safetensors: header is not valid JSON"):
        SafetensorsReader(tmp_path / "garbage.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointFormatError, match="huge.safetensors: header length"):
        SafetensorsReader(tmp_path / "huge.safetensors")
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        SafetensorsReader(tmp_path / "missing.safetensors")
