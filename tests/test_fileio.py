"""maskrt.fileio: a reader sees the old file or the new one, never half of one; nothing is
overwritten without --force.

Oracles: the bytes on disk and hashlib.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from maskrt.errors import MaskrtError
from maskrt.fileio import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    sha256_file,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_check_writable(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.onnx"
    assert check_writable(path, force=False) == path and path.parent.is_dir()
    path.write_bytes(b"x")
    with pytest.raises(MaskrtError, match="exists; pass --force"):
        check_writable(path, force=False)
    assert check_writable(path, force=True) == path and path.read_bytes() == b"x"


def test_sha256_reads_the_whole_file_in_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 8193  # a little over 2 MiB: three blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
