"""Reading the operator's text files (the config, rule files, list files): bounded, never
blocking on a FIFO or a device, UTF-8 checked. Parsing is the core's (core/tomlsource.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from portguard.core.tomlsource import MIB, TextError


def read_text(path: Path, limit: int) -> str:
    """A regular file of at most ``limit`` bytes, as UTF-8 text. Opened without blocking (a
    FIFO would hang the reader) and checked with fstat (a device would be read for ever).
    Raises OSError (cannot open) or TextError (not a text file portguard reads)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", closefd=True) as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TextError("is not a regular file")
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise TextError(f"is larger than {limit // MIB} MiB, the limit for this kind of file")
    return decode_utf8(data)


def decode_utf8(data: bytes) -> str:
    """UTF-8 text; an invalid byte is a TextError at its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        col = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        byte = data[error.start]
        raise TextError(f"not UTF-8 text (byte 0x{byte:02x})", line, col) from None
