"""Problems found in the operator's files, reported as ``path:line: message``, all at once;
and the error that ends a start (``StartupError``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TOML_POSITION = re.compile(r"^(?P<text>.*?) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_END = re.compile(r"^(?P<text>.*?) \(at end of document\)$")


HOST_KEPT = "host-kept"  # a Problem's kind: a host name that did not resolve (a transient
# failure) kept its addresses from the policy in force (daemon.first_policy logs it at start)


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in one file. ``line`` is None when the error concerns the file as a whole.
    ``kind`` names a problem code matches on (e.g. HOST_KEPT); the message is for people."""

    path: Path
    line: int | None
    message: str
    col: int | None = None
    kind: str | None = None

    def format(self) -> str:
        where = shown(str(self.path))
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {shown(self.message)}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (str(self.path), self.line or 0, self.col or 0, self.message)

    def as_dict(self) -> dict[str, str | int | None]:
        """For ``portguard check --format json``."""
        return {"path": str(self.path), "line": self.line, "col": self.col, "message": self.message}


MAX_MESSAGE = 500  # characters of one message: a 100 MB line must not become a 100 MB message
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """Text from a hostile file made safe for a terminal and a log line: control characters
    (an escape sequence, a NUL) written as ``\\xNN``, and at most MAX_MESSAGE characters."""
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}... ({len(text):,} characters)"
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class SourceError(Exception):
    """The files hold errors; ``messages`` lists every one as ``path:line: message``."""

    def __init__(self, problems: Iterable[Problem | str]) -> None:
        items = list(problems)
        located = sorted((p for p in items if isinstance(p, Problem)), key=Problem.sort_key)
        self.problems: tuple[Problem, ...] = tuple(located)
        self.plain: tuple[str, ...] = tuple(p for p in items if isinstance(p, str))
        self.messages: list[str] = [p.format() for p in located] + list(self.plain)
        super().__init__("\n".join(self.messages))


class StartupError(Exception):
    """The daemon could not start (a queue or socket it needs): the message says which."""


class ConfigError(SourceError):
    """The daemon config file is not valid."""


class PolicyError(SourceError):
    """A rule file (or a list file it names) is not valid; no policy was built."""


def unexpected(path: Path, error: BaseException) -> Problem:
    """The last resort of a loader: an exception nobody foresaw, as a message naming the file
    that was being loaded (a bug in portguard or a file beyond what it was built for)."""
    return Problem(path, None, f"unexpected error while loading: {type(error).__name__}: {error}")


def toml_syntax_problem(path: Path, text: str, error: ValueError) -> Problem:
    """Turn tomllib's ``message (at line L, column C)`` into a located Problem."""
    raw = str(error)
    match = _TOML_POSITION.match(raw)
    if match:
        line, col = int(match["line"]), int(match["col"])
        return Problem(path, line, f"TOML syntax error: {match['text']}", col)
    match = _TOML_END.match(raw)
    if match:
        return Problem(path, max(1, text.count("\n") + 1), f"TOML syntax error: {match['text']}")
    return Problem(path, None, f"TOML syntax error: {raw}")
