"""Decision-log files read line by line: plain or gzip (by their first bytes, whatever the
name: logrotate's `.1` and `.2.gz` alike), in constant memory.

A line longer than `MAX_LINE` is yielded cut to its first `MAX_LINE` bytes (no event is that
long: the reader finds no JSON in it) and its rest skipped in pieces, so a file without line
breaks never fills memory. A gzip file cut short (a full disk while compressing)
yields what it holds and then reports it through `warn`; any other failure to read is a
`LogFileError` naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

MAX_LINE = 1 << 20  # bytes: a portguard event is a few KiB
GZIP_MAGIC = b"\x1f\x8b"


class LogFileError(Exception):
    """A log file that cannot be read: `path: message`."""


def log_lines(path: Path, warn: Callable[[str], None]) -> Iterator[bytes]:
    """The lines of one log file (with their line breaks), gunzipped when it is gzip."""
    try:
        with path.open("rb") as raw:
            if raw.peek(2)[:2] == GZIP_MAGIC:
                with gzip.GzipFile(fileobj=raw) as unzipped:
                    yield from _lines(path, unzipped.readline, warn)
            else:
                yield from _lines(path, raw.readline, warn)
    except OSError as error:  # gzip.BadGzipFile is an OSError too
        raise LogFileError(f"{path}: {error.strerror or error}") from None
    except zlib.error as error:
        raise LogFileError(f"{path}: damaged compressed data ({error})") from None


def _lines(
    path: Path, readline: Callable[[int], bytes], warn: Callable[[str], None]
) -> Iterator[bytes]:
    try:
        while line := readline(MAX_LINE):
            if len(line) == MAX_LINE and not line.endswith(b"\n"):
                while (rest := readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    pass
            yield line
    except EOFError:  # gzip: the compressed stream ends before its end marker
        warn(f"{path}: warning: the compressed file ends early (cut short); read up to there")
