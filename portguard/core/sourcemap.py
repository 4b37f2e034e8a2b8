"""Where each key and array element of a TOML document is written: key path -> line, column.

tomllib returns values without positions. This scanner walks the text of a document that tomllib
has already accepted and records the position of every table header, every key (also keys inside
inline tables) and every array element, under the same key path that the parsed data and
pydantic's error locations use: ``("rule", 2, "dport", 1)`` is the second element of ``dport``
in the third ``[[rule]]`` table.

The scanner assumes valid TOML (parse with tomllib first); on text it cannot follow it stops and
keeps what it found so far, so a lookup falls back to the nearest parent path.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import tomllib
from collections.abc import Mapping

KeyPath = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line and column

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_LITERAL_STRING = re.compile(r"'[^'\n]*'")
_BARE_SCALAR = re.compile(r"[^,\]}#\r\n]+")  # numbers, booleans, dates (may hold a space)
_SPACE = " \t"


class SourceMap:
    """Positions of the keys and array elements of one TOML document."""

    def __init__(self, positions: Mapping[KeyPath, Position]) -> None:
        self._positions = dict(positions)

    @classmethod
    def scan(cls, text: str) -> SourceMap:
        scanner = _Scanner(text)
        with contextlib.suppress(_ScanStop, RecursionError):
            scanner.document()
        return cls(scanner.positions)

    @staticmethod
    def deep_point(text: str, limit: int) -> Position | None:
        """Where the first key or array element more than ``limit`` levels deep is written
        (also in text that tomllib gave up on because of its depth); None if there is none."""
        scanner = _Scanner(text, limit)
        with contextlib.suppress(_ScanStop, RecursionError):
            scanner.document()
        return scanner.too_deep

    def position(self, path: KeyPath) -> Position | None:
        """The exact position of ``path``, or None when the document does not write it."""
        return self._positions.get(tuple(path))

    def locate(self, path: KeyPath) -> Position:
        """The position of ``path`` or of its nearest written parent; (1, 1) for the document."""
        probe = tuple(path)
        while probe:
            found = self._positions.get(probe)
            if found is not None:
                return found
            probe = probe[:-1]
        return (1, 1)

    def line(self, path: KeyPath) -> int:
        return self.locate(path)[0]


class _ScanStop(Exception):
    """The text is not TOML this scanner can follow."""


class _Scanner:
    def __init__(self, text: str, limit: int | None = None) -> None:
        self.text = text
        self.pos = 0
        self.limit = limit  # a key path longer than this stops the scan (see deep_point)
        self.too_deep: Position | None = None
        self.positions: dict[KeyPath, Position] = {}
        self._array_tables: dict[KeyPath, int] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    # --- document structure -------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank()
            if self.pos >= len(self.text):
                return
            if self.text.startswith("[[", self.pos):
                table = self._array_table_header()
            elif self.text.startswith("[", self.pos):
                table = self._table_header()
            else:
                self._key_value(table)

    def _table_header(self) -> KeyPath:
        start = self.pos
        self.pos += 1
        keys = self._key()
        self._expect("]")
        path = self._resolve(keys, start)
        self._record(path, start)
        return path

    def _array_table_header(self) -> KeyPath:
        start = self.pos
        self.pos += 2
        keys = self._key()
        self._expect("]]")
        array = (*self._resolve(keys[:-1], start), keys[-1])
        index = self._array_tables.get(array, -1) + 1
        self._array_tables[array] = index
        self.positions.setdefault(array, self._where(start))
        path = (*array, index)
        self._record(path, start)
        return path

    def _resolve(self, keys: list[str], start: int) -> KeyPath:
        """A header's key path, with the current index of each array of tables on the way.

        Parent tables that no header of their own names are placed at this header."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            self._record(path, start)
            index = self._array_tables.get(path)
            if index is not None:
                path = (*path, index)
        return path

    def _key_value(self, table: KeyPath) -> None:
        start = self.pos
        keys = self._key()
        for depth in range(1, len(keys)):
            self._record(table + tuple(keys[:depth]), start)
        path = table + tuple(keys)
        self._record(path, start)
        self._skip_space()
        self._expect("=")
        self._skip_space()
        self._value(path)

    # --- keys ---------------------------------------------------------------------------

    def _key(self) -> list[str]:
        keys = []
        while True:
            self._skip_space()
            keys.append(self._simple_key())
            self._skip_space()
            if not self.text.startswith(".", self.pos):
                return keys
            self.pos += 1

    def _simple_key(self) -> str:
        for pattern in (_BARE_KEY, _BASIC_STRING, _LITERAL_STRING):
            match = pattern.match(self.text, self.pos)
            if match:
                self.pos = match.end()
                raw = match.group()
                return raw if pattern is _BARE_KEY else _decode_string(raw)
        raise _ScanStop

    # --- values -------------------------------------------------------------------------

    def _value(self, path: KeyPath) -> None:
        text, pos = self.text, self.pos
        if text.startswith('"""', pos):
            self._multiline_string('"""', escapes=True)
        elif text.startswith("'''", pos):
            self._multiline_string("'''", escapes=False)
        elif text.startswith('"', pos):
            self._single_line(_BASIC_STRING)
        elif text.startswith("'", pos):
            self._single_line(_LITERAL_STRING)
        elif text.startswith("[", pos):
            self._array(path)
        elif text.startswith("{", pos):
            self._inline_table(path)
        else:
            self._bare_scalar()

    def _array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip_blank()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return
            element = (*path, index)
            self._record(element, self.pos)
            self._value(element)
            index += 1
            self._skip_blank()
            if self.text.startswith(",", self.pos):
                self.pos += 1

    def _inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self._skip_blank()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return
            self._key_value(path)
            self._skip_blank()
            if self.text.startswith(",", self.pos):
                self.pos += 1

    def _multiline_string(self, quote: str, *, escapes: bool) -> None:
        pos = self.pos + 3
        while True:
            end = self.text.find(quote, pos)
            if end < 0:
                raise _ScanStop
            if escapes and _escaped(self.text, end):
                pos = end + 1
                continue
            run = end
            while run < len(self.text) and run - end < 5 and self.text[run] == quote[0]:
                run += 1  # up to two quotes may end the content right before the delimiter
            self.pos = run
            return

    def _single_line(self, pattern: re.Pattern[str]) -> None:
        match = pattern.match(self.text, self.pos)
        if not match:
            raise _ScanStop
        self.pos = match.end()

    def _bare_scalar(self) -> None:
        match = _BARE_SCALAR.match(self.text, self.pos)
        if not match:
            raise _ScanStop
        self.pos = match.start() + len(match.group().rstrip())

    # --- helpers ------------------------------------------------------------------------

    def _skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1

    def _skip_blank(self) -> None:
        """Skip whitespace, newlines and comments."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "#":
                newline = self.text.find("\n", self.pos)
                self.pos = len(self.text) if newline < 0 else newline
            else:
                return

    def _expect(self, token: str) -> None:
        self._skip_space()
        if not self.text.startswith(token, self.pos):
            raise _ScanStop
        self.pos += len(token)

    def _record(self, path: KeyPath, offset: int) -> None:
        if self.limit is not None and len(path) > self.limit:
            self.too_deep = self._where(offset)
            raise _ScanStop
        self.positions.setdefault(path, self._where(offset))

    def _where(self, offset: int) -> Position:
        line = bisect.bisect_right(self._line_starts, offset)
        return (line, offset - self._line_starts[line - 1] + 1)


def _escaped(text: str, index: int) -> bool:
    """Whether the character at ``index`` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _decode_string(raw: str) -> str:
    value = tomllib.loads(f"k = {raw}")["k"]
    if not isinstance(value, str):
        raise _ScanStop
    return value
