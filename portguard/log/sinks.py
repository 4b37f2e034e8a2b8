"""Stream sinks (stdout, file) and what every sink shares: levels, the sink contract.

A sink writes one event at a time in its own thread (writer.py gives each sink a bounded
queue): `write` may block, and raises OSError when that event could not be written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from portguard.core.events.lines import LineBlock, LogItem, Queued, RenderedEvent
from portguard.core.events.record import Event
from portguard.log import formats
from portguard.log.ecs import with_community_id

# syslog severities (RFC 5424) of the ECS log.level values portguard writes
LEVELS: dict[str, int] = {"error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
DEFAULT_SEVERITY = LEVELS["info"]

StateCallback = Callable[[bool, str], None]


def severity(event: Queued) -> int:
    """The event's syslog severity, from ECS log.level (info when it has none); a block's is
    that of its least severe event (an output that takes it takes all of them)."""
    if isinstance(event, RenderedEvent):
        return LEVELS[event.level]
    if isinstance(event, LineBlock):
        return max(LEVELS[level] for level in set(event.levels))
    level = event.get("log", {}).get("level")
    return LEVELS.get(level, DEFAULT_SEVERITY) if isinstance(level, str) else DEFAULT_SEVERITY


class EventSink(Protocol):
    """What the writer drives, one thread per sink."""

    name: str
    format: str  # the format it writes: "ecs", "ocsf" or "cef"
    blocks: bool  # it writes a LineBlock as it is (else it is given each of its events)

    def write(self, event: LogItem) -> None: ...

    def flush(self) -> None: ...

    def reopen(self) -> None: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


def prepare(event: Queued) -> Queued:
    """What every format shares, done once per event in the log process (not once per sink):
    the Community ID (a rendered event has it). The event's fields are already in reading
    order (`core/events`)."""
    if isinstance(event, RenderedEvent | LineBlock):
        return event
    return with_community_id(event)


def render_line(event: Event) -> bytes:
    """The exact bytes a sink writes for one ECS event (without the newline); used by tests."""
    return formats.render(event, "ecs")


class Sink:
    """One output: a binary stream written one line per event, in the sink's format."""

    def __init__(
        self,
        name: str,
        stream: BinaryIO,
        owned: bool,
        fmt: str = "ecs",
        path: Path | None = None,
        prefix: bool = False,
        page_cache: int = 0,
    ) -> None:
        self.name = name
        self.format = fmt
        self.owned = owned
        self.path = path  # a file sink: reopened by name after log rotation
        self.prefix = prefix
        self.blocks = fmt == "ecs" and not prefix  # a block's lines are this sink's lines
        self._render = formats.renderer(fmt)  # ValueError for an unknown format
        self.errors = 0
        self.page_cache = page_cache  # a file: bytes of its end left in the page cache (0: all)
        self._attach(stream)

    def _attach(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.trim = CacheTrim.of(stream, self.page_cache) if self.path is not None else None

    def reopen(self) -> None:
        """After logrotate moved the file: continue in a new file of the same name."""
        if self.path is None:
            return
        try:
            fresh = open_output(self.path)
        except OSError:
            self.errors += 1
            raise
        old = self.stream
        self._attach(fresh)
        old.close()  # flushes what the old file still buffers

    def write(self, event: Queued) -> None:
        """One line (a block's lines) into the stream's buffer (prepared events: see
        `prepare`); the writer flushes once its queue is empty, so a burst costs few system
        calls."""
        if isinstance(event, LineBlock):
            data = event.data
        else:
            data = self._render(event) + b"\n"
            if self.prefix:  # journald's `<N>` priority prefix (`journalctl -p warning` works)
                data = b"<%d>%s" % (severity(event), data)
        self._guarded(self.stream.write, data)
        if self.trim is not None:
            self.trim.end += len(data)

    def flush(self) -> None:
        self._guarded(self.stream.flush)
        if self.trim is not None:
            self.trim.after_flush()

    def _guarded(self, action: Callable[..., object], *args: object) -> None:
        """Run a stream operation; any failure is counted and raised as OSError."""
        try:
            action(*args)
        except ValueError as error:  # a closed stream
            self.errors += 1
            raise OSError(str(error)) from None
        except OSError:
            self.errors += 1
            raise

    def interrupt(self) -> None:
        """Nothing to interrupt: a write to a local stream returns on its own."""

    def close(self) -> None:
        if self.owned:
            self.stream.close()


def journald_stdout() -> bool:
    """Whether stdout is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def stdout_sink(fmt: str = "ecs", prefix: str = "auto") -> Sink:
    """stdout; `prefix` "auto" adds `<N>` only when stdout goes to journald."""
    with_prefix = prefix == "always" or (prefix == "auto" and journald_stdout())
    return Sink("stdout", sys.stdout.buffer, owned=False, fmt=fmt, prefix=with_prefix)


OUTPUT_MODE = 0o640  # a new log file: the owner writes, its group (a log shipper) reads
FILE_BUFFER = 1 << 20  # bytes: a run of events (flushed together) in one write
OUTPUT_DIR_MODE = 0o750
_OUTPUT_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


TRIM_EVERY = 16 << 20  # bytes written between two trims of a file's page cache


class CacheTrim:
    """A log file's lines leave the page cache once they are on disk and `keep` bytes behind
    its end: a log is written once and read at most once, soon (a shipper tailing it), so at
    100 MB/s it would otherwise fill the page cache and make the kernel reclaim other pages
    for it. Every TRIM_EVERY bytes, POSIX_FADV_DONTNEED from the file's start to `keep` before
    its end: the kernel starts writing back what is dirty there and drops what is clean (the
    next trim drops what was still being written). Only advice: a failure changes nothing."""

    def __init__(self, fd: int, keep: int, end: int) -> None:
        self.fd, self.keep = fd, keep
        self.end = end  # the file's size: where the next line goes (O_APPEND)
        self.trimmed = 0  # where the last trim's range ended

    @classmethod
    def of(cls, stream: BinaryIO, keep: int) -> CacheTrim | None:
        """A trim for a file `stream` (None when `keep` is 0 or the stream has no file)."""
        if keep <= 0:
            return None
        try:
            fd = stream.fileno()
            return cls(fd, keep, os.fstat(fd).st_size)
        except (OSError, ValueError):
            return None

    def after_flush(self) -> None:
        upto = self.end - self.keep
        if upto - self.trimmed < TRIM_EVERY:
            return
        self.trimmed = upto
        with contextlib.suppress(OSError):
            os.posix_fadvise(self.fd, 0, upto, os.POSIX_FADV_DONTNEED)


class SymlinkOutputError(OSError):
    """The output path is a symbolic link: a root daemon never writes where a link points."""


def open_output(path: Path) -> BinaryIO:
    """A log file opened as a root daemon must: never through a symbolic link at ``path``
    (O_NOFOLLOW: whoever can write the directory could point it at /etc/shadow), created with
    mode 0640, never a FIFO or device (O_NONBLOCK while opening, then checked)."""
    try:
        fd = os.open(path, _OUTPUT_FLAGS | os.O_NONBLOCK, OUTPUT_MODE)
    except OSError as error:
        if error.errno == errno.ELOOP or path.is_symlink():
            raise SymlinkOutputError(
                errno.ELOOP, f"{path} is a symbolic link; portguard does not write through one"
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab", buffering=FILE_BUFFER)
    except BaseException:
        os.close(fd)
        raise


def file_sink(path: Path, fmt: str = "ecs", page_cache: int = 0) -> Sink:
    """A file output; `page_cache`: bytes of its end left in the page cache (`CacheTrim`)."""
    path.parent.mkdir(mode=OUTPUT_DIR_MODE, parents=True, exist_ok=True)
    stream = open_output(path)
    return Sink(f"file:{path}", stream, owned=True, fmt=fmt, path=path, page_cache=page_cache)
