"""Stream sinks: levels, journald's priority prefix, errors as OSError."""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from portguard.core.events.lines import LineBlock
from portguard.log import sinks
from portguard.log.sinks import (
    Sink,
    SymlinkOutputError,
    file_sink,
    journald_stdout,
    open_output,
    severity,
    stdout_sink,
)

EVENT = {"@timestamp": "2026-11-27T17:00:00.000000Z", "event": {"action": "drop"}}


@pytest.mark.parametrize(
    ("level", "number"),
    [("error", 3), ("warning", 4), ("notice", 5), ("info", 6), ("debug", 7), ("odd", 6)],
)
def test_severity_follows_syslog_numbers(level: str, number: int) -> None:
    assert severity({"log": {"level": level}}) == number


def test_an_event_without_a_level_is_info() -> None:
    assert severity({}) == 6 and severity({"log": {"level": 3}}) == 6


def test_the_journald_prefix_carries_the_severity() -> None:
    stream = io.BytesIO()
    Sink("stdout", stream, owned=False, prefix=True).write({**EVENT, "log": {"level": "warning"}})
    line = stream.getvalue()
    assert line.startswith(b"<4>{") and line.endswith(b"\n")
    assert orjson.loads(line[3:])["log"] == {"level": "warning"}


def test_no_prefix_by_default_and_in_every_format() -> None:
    for fmt in ("ecs", "ocsf", "cef"):
        plain, prefixed = io.BytesIO(), io.BytesIO()
        event = {**EVENT, "log": {"level": "error"}, "message": "m",
                 "event": {"action": "stop", "dataset": "portguard.lifecycle"}}  # fmt: skip
        Sink("a", plain, owned=False, fmt=fmt).write(dict(event))
        Sink("b", prefixed, owned=False, fmt=fmt, prefix=True).write(dict(event))
        assert prefixed.getvalue() == b"<3>" + plain.getvalue()


def test_journald_is_recognised_by_the_stdout_device_and_inode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with (tmp_path / "out").open("wb") as out:
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
        info = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert journald_stdout()
        assert stdout_sink(prefix="auto").prefix and not stdout_sink(prefix="never").prefix
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
        assert not journald_stdout() and not stdout_sink(prefix="auto").prefix
        assert stdout_sink(prefix="always").prefix
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journald_stdout()


def test_a_write_to_a_closed_stream_raises_oserror() -> None:
    stream = io.BytesIO()
    sink = Sink("closed", stream, owned=True)
    sink.close()
    with pytest.raises(OSError):
        sink.write(dict(EVENT))
    assert sink.errors == 1


def test_a_reopen_that_fails_raises_and_keeps_the_old_stream(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    sink = file_sink(path)
    path.rename(tmp_path / "events.json.1")  # logrotate moved it...
    path.mkdir()  # ...and something else took the name: open() fails, even for root
    with pytest.raises(IsADirectoryError):
        sink.reopen()
    sink.write(dict(EVENT))  # still writes to the old stream
    sink.close()
    assert sink.errors == 1
    assert (tmp_path / "events.json.1").read_bytes().count(b"\n") == 1


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        Sink("x", io.BytesIO(), owned=False, fmt="xml")


# --- files as a root daemon writes them --------------------------------------------------------


def test_a_new_output_file_is_created_0640_and_appended_to(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        sink = file_sink(tmp_path / "log" / "events.jsonl")
    finally:
        os.umask(old)
    sink.write(EVENT)
    sink.close()
    path = tmp_path / "log" / "events.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert file_sink(path).stream.mode == "ab" and len(path.read_bytes().splitlines()) == 1


def test_a_symlinked_output_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("precious\n")
    (tmp_path / "events.jsonl").symlink_to(target)
    with pytest.raises(SymlinkOutputError, match=r"events.jsonl is a symbolic link"):
        file_sink(tmp_path / "events.jsonl")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "nothere")
    with pytest.raises(SymlinkOutputError):
        file_sink(tmp_path / "dangling.jsonl")
    assert not (tmp_path / "nothere").exists() and target.read_text() == "precious\n"


def test_a_fifo_or_device_output_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match=r"not a regular file|No such device"):
        open_output(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        open_output(Path("/dev/null"))


def test_a_reopen_onto_a_planted_symlink_raises_and_writes_nothing(tmp_path: Path) -> None:
    path, target = tmp_path / "events.jsonl", tmp_path / "shadow"
    target.write_text("precious\n")
    sink = file_sink(path)
    path.rename(tmp_path / "events.jsonl.1")  # logrotate
    path.symlink_to(target)  # and someone who can write the directory
    with pytest.raises(SymlinkOutputError):
        sink.reopen()
    assert sink.errors == 1 and target.read_text() == "precious\n"
    sink.write(EVENT)  # still the rotated file
    sink.close()
    assert (tmp_path / "events.jsonl.1").read_bytes().count(b"\n") == 1


MIB = 1 << 20


def block_of(size: int) -> LineBlock:
    """A run of lines of `size` bytes (only its bytes matter to a file sink)."""
    line = b"x" * 1023 + b"\n"
    return LineBlock(line * (size // len(line)), [], [], [], None)


def test_a_file_output_trims_the_page_cache_behind_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every TRIM_EVERY bytes (after a flush): DONTNEED from the start to `keep` before the
    end, the end counted from the size the file had when opened (appended to)."""
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(sinks, "TRIM_EVERY", 2 * MIB)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, at, size, advice: calls.append(
        (at, size, advice)))  # fmt: skip
    path = tmp_path / "decisions.log"
    path.write_bytes(b"y\n" * MIB)  # 2 MiB already there
    sink = file_sink(path, page_cache=3 * MIB)
    for _ in range(8):
        sink.write(block_of(MIB))
        sink.flush()
    sink.close()
    assert path.stat().st_size == 10 * MIB
    dontneed = os.POSIX_FADV_DONTNEED
    assert calls == [(0, 2 * MIB, dontneed), (0, 4 * MIB, dontneed), (0, 6 * MIB, dontneed)]


def test_no_trim_without_a_file_or_with_page_cache_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks, "TRIM_EVERY", 1)
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: pytest.fail("trimmed"))
    kept = file_sink(tmp_path / "a.log", page_cache=0)
    stream = Sink("stdout", io.BytesIO(), owned=False, page_cache=MIB)
    for sink in (kept, stream):
        sink.write(block_of(4 * MIB))
        sink.flush()
        assert sink.trim is None


def test_a_reopened_file_is_trimmed_from_its_own_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(sinks, "TRIM_EVERY", MIB)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, at, size, advice: calls.append(size))
    path = tmp_path / "decisions.log"
    sink = file_sink(path, page_cache=MIB)
    sink.write(block_of(3 * MIB))
    sink.flush()
    path.rename(tmp_path / "decisions.log.1")
    sink.reopen()
    sink.write(block_of(MIB))
    sink.flush()  # 1 MiB in the new file: nothing behind `keep` yet
    sink.write(block_of(MIB))
    sink.flush()
    sink.close()
    assert calls == [2 * MIB, MIB]


def resident(path: Path) -> int:
    """Pages of `path` in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with path.open("rb") as file:
        at = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
    assert at not in (None, ctypes.c_void_p(-1).value)
    try:
        vector = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(at), ctypes.c_size_t(size), vector) == 0
        return sum(byte & 1 for byte in vector)
    finally:
        libc.munmap(ctypes.c_void_p(at), ctypes.c_size_t(size))


def test_trimmed_lines_leave_the_page_cache_and_stay_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's part: what was written and is on disk leaves the cache; the file keeps
    every byte (tmpfs keeps its pages in memory: nothing to drop there)."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    if kind in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is {kind}")
    monkeypatch.setattr(sinks, "TRIM_EVERY", MIB)
    path = tmp_path / "decisions.log"
    sink = file_sink(path, page_cache=MIB)
    sink.write(block_of(8 * MIB))
    sink.flush()  # the first trim starts the write-back
    os.fsync(sink.stream.fileno())
    sink.write(block_of(2 * MIB))
    sink.flush()  # the second drops what is now on disk
    sink.close()
    assert path.stat().st_size == 10 * MIB
    assert resident(path) * mmap.PAGESIZE <= 3 * MIB  # of 10: the last MiB and the last 2 written
    assert path.read_bytes().count(b"\n") == 10 * 1024
