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


def _runs_case(tmp_path):
    """Two files and a TensorRuns mixing every kind of run, with the tensor it must produce."""
    from megarl.checkpoint.safetensors_stream import TensorRuns

    gen = torch.Generator().manual_seed(0)
    a = {"big": torch.randn(300, 512, generator=gen).to(torch.bfloat16), "rows": torch.randn(64, 40, generator=gen).to(torch.bfloat16)}
    b = {"rows": torch.randn(64, 40, generator=gen).to(torch.bfloat16), "vec": torch.randn(33, generator=gen).to(torch.bfloat16)}
    _write(tmp_path / "a.safetensors", a)
    _write(tmp_path / "b.safetensors", b)
    ra, rb = SafetensorsReader(tmp_path / "a.safetensors"), SafetensorsReader(tmp_path / "b.safetensors")
    sources = (ra.location("big"), ra.location("rows"), rb.location("rows"), rb.location("vec"))
    pieces, expected = [], []  # (source, element offset, numel)
    pieces.append((0, 0, 300 * 512))  # 300 KiB: one copy_file_range
    expected.append(a["big"].reshape(-1))
    for r in range(64):  # row halves alternating between the files, second halves first: gathered, read in file order
        pieces += [(1, r * 40 + 20, 20), (2, r * 40 + 20, 20)]
        expected += [a["rows"][r, 20:], b["rows"][r, 20:]]
    pieces.append((-1, 0, 7))  # padding zeros
    expected.append(torch.zeros(7, dtype=torch.bfloat16))
    pieces.append((3, 0, 33))
    expected.append(b["vec"])
    import numpy as np

    src = np.array([p[0] for p in pieces], np.int64)
    offset = np.array([sources[k].offset + e * 2 if k >= 0 else 0 for k, e, _ in pieces], np.int64)
    runs = TensorRuns(sources, src, offset, np.array([p[2] for p in pieces], np.int64))
    return runs, torch.cat(expected)


@pytest.mark.parametrize("kernel_copy,map_files,staging", [(True, True, 1 << 20), (False, False, 1 << 20), (True, False, 4096), (False, True, 4096)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_run_copier_writes_the_runs_in_every_path(tmp_path, kernel_copy, map_files, staging, dtype):
    """Kernel copy, mapped writev, preadv gather and chunked casts (a 4 KiB staging buffer splits
    every batch and cast) all produce the tensor that indexing and .to(dtype) produce."""
    from megarl.checkpoint.safetensors_stream import RunCopier

    runs, expected = _runs_case(tmp_path)
    out = tmp_path / "out.bin"
    with open(out, "wb", buffering=0) as f, RunCopier(staging_bytes=staging, kernel_copy=kernel_copy, map_files=map_files) as copier:
        written = copier.copy(runs, f.fileno(), dtype)
    want = expected.to(dtype)
    assert written == want.numel() * want.element_size() == out.stat().st_size
    assert torch.equal(torch.frombuffer(bytearray(out.read_bytes()), dtype=dtype), want)


def test_run_copier_falls_back_when_the_kernel_refuses(tmp_path, monkeypatch):
    """copy_file_range failing with EXDEV (another filesystem, older kernels) switches to reading and writing."""
    import errno
    import os

    from megarl.checkpoint.safetensors_stream import RunCopier

    def refuse(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    runs, expected = _runs_case(tmp_path)
    out = tmp_path / "out.bin"
    with open(out, "wb", buffering=0) as f, RunCopier() as copier:
        copier.copy(runs, f.fileno(), torch.bfloat16)
        assert not copier.kernel_copy
    assert torch.equal(torch.frombuffer(bytearray(out.read_bytes()), dtype=torch.bfloat16), expected)


def test_write_runs_checks_the_declared_size(tmp_path):
    from megarl.checkpoint.safetensors_stream import RunCopier, TensorRuns

    _write(tmp_path / "a.safetensors", {"x": torch.ones(4, 3)})
    loc = SafetensorsReader(tmp_path / "a.safetensors").location("x")
    with SafetensorsWriter(tmp_path / "o.safetensors", [("y", torch.float32, (4, 4))]) as w, RunCopier() as copier:
        with pytest.raises(CheckpointFormatError, match=r"'y' has 12 elements in its runs, declared \(4, 4\)"):
            w.write_runs("y", TensorRuns.whole(loc), copier)
        w.abort()
