"""onnx_compress.atomic.write_atomic: the one writer of small files (data, reports, Triton configs)."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from onnx_compress.atomic import write_atomic


def test_text_bytes_and_writer_callables_land_with_mode_0644(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    arrays = {"x": np.arange(6.0).reshape(2, 3)}
    out = write_atomic(tmp_path / "c.npz", lambda handle: np.savez(handle, **arrays))
    np.testing.assert_array_equal(np.load(out)["x"], arrays["x"])
    for name in ("a.txt", "b.bin", "c.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert stat.S_IMODE(write_atomic(tmp_path / "d", "x", mode=0o600).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.npz", "d"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_atomic(tmp_path / "config.pbtxt", "old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]
