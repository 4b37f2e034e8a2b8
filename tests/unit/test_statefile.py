"""The state directory's files: atomic writes with a fixed mode, reads that trust no one else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portguard.service.statefile import FILE_MODE, StateError, read_trusted, write_atomic


def test_write_replaces_the_file_whole_with_its_own_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "quarantine.json"
    old_umask = os.umask(0)
    try:
        write_atomic(path, b"one")
        write_atomic(path, b"two")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"two"
    assert path.stat().st_mode & 0o777 == FILE_MODE
    assert oct(path.parent.stat().st_mode & 0o777) == "0o750"
    assert [p.name for p in path.parent.iterdir()] == ["quarantine.json"]  # no temp left


def test_a_symbolic_link_is_neither_written_through_nor_read(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    link = tmp_path / "resolved.json"
    link.symlink_to(target)
    with pytest.raises(StateError, match="symbolic link"):
        read_trusted(link)
    write_atomic(link, b"new")  # replaces the link itself, never writes where it points
    assert target.read_bytes() == b"precious" and not link.is_symlink()
    temp = tmp_path / f".x.{os.getpid()}.tmp"
    temp.symlink_to(target)  # a planted temp name is not followed either
    with pytest.raises(OSError):
        write_atomic(tmp_path / "x", b"new")
    assert target.read_bytes() == b"precious"


def test_files_others_could_write_or_too_large_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resolved.json"
    write_atomic(path, b"x" * 100)
    assert read_trusted(path) == b"x" * 100
    with pytest.raises(StateError, match="larger"):
        read_trusted(path, limit=10)
    path.chmod(0o666)
    with pytest.raises(StateError, match="writable by other users"):
        read_trusted(path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StateError, match="not a regular file"):
        read_trusted(fifo)
