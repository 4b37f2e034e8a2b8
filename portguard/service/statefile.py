"""The daemon's own files: its state directory (``[daemon] state_dir``) and run-time hand-overs.

Everything the daemon keeps across restarts lives in one directory it owns (systemd's
``StateDirectory=portguard``: /var/lib/portguard). Today that is ``resolved.json``, the last good
resolution of every host name of the rule files; later modules add their own files (e.g.
``quarantine.json``). Each file is written the way a root daemon writes: to a temporary file
in the same directory, fsync'd, then renamed over the old one (a crash leaves the old file or
the new one, never half of one), with an explicit mode, and never through a symbolic link.
Reading refuses links, files another user could have written, and files beyond a size limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

FILE_MODE = 0o600  # only the daemon's user reads its state
DIR_MODE = 0o750
MAX_STATE_FILE = 64 * 1024 * 1024  # bytes: a state file larger than this is not read


class StateError(OSError):
    """A state file that cannot be written or must not be trusted: the message says why."""


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data``: temp file + fsync + rename, then fsync the directory."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    os.replace(temp, path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse a directory fsync
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_trusted(path: Path, limit: int = MAX_STATE_FILE, own: bool = True) -> bytes:
    """The bytes of a state file: not a link, a regular file, writable by its owner only, at
    most ``limit`` bytes, and (``own``) owned by this process's user. Data that only names
    addresses may pass ``own=False`` (root's `portguard check` reads the daemon user's file);
    anything that runs code on load never does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:  # the path is a symbolic link
            raise StateError(f"{path}: a symbolic link; state files are never followed") from None
        raise
    with os.fdopen(fd, "rb") as file:
        problem = _untrusted(os.fstat(fd), limit, own)
        if problem:
            raise StateError(f"{path}: {problem}")
        return file.read(limit + 1)


def _untrusted(info: os.stat_result, limit: int, own: bool) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if own and info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not by the daemon's user"
    if info.st_mode & 0o022:
        return "writable by other users"
    if info.st_size > limit:
        return f"larger than {limit} bytes"
    return None
