"""Log files line by line: plain, gzip (by content, whatever the name), cut short, too long."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from portguard.io import logfiles
from portguard.io.logfiles import LogFileError, log_lines

LINES = [b'{"a": 1}\n', b'{"b": 2}\n', b"last, cut"]


def read(path: Path) -> tuple[list[bytes], list[str]]:
    warnings: list[str] = []
    return list(log_lines(path, warnings.append)), warnings


def test_plain_and_gzip_files_give_the_same_lines(tmp_path: Path) -> None:
    plain, packed = tmp_path / "decisions.log.1", tmp_path / "decisions.log.2.gz"
    plain.write_bytes(b"".join(LINES))
    packed.write_bytes(gzip.compress(b"".join(LINES)))
    assert read(plain) == read(packed) == (LINES, [])


def test_gzip_is_known_by_its_content_not_its_name(tmp_path: Path) -> None:
    odd = tmp_path / "decisions.log"
    odd.write_bytes(gzip.compress(LINES[0]))
    assert read(odd) == ([LINES[0]], [])


def test_a_gzip_file_cut_short_yields_what_it_holds_and_warns(tmp_path: Path) -> None:
    cut = tmp_path / "decisions.log.3.gz"
    whole = gzip.compress(b"".join(LINES * 1000))
    cut.write_bytes(whole[: len(whole) - 10])
    lines, warnings = read(cut)
    assert 0 < len(lines) <= 3000 and lines[0] == LINES[0]
    assert warnings == [f"{cut}: warning: the compressed file ends early (cut short); "
                        "read up to there"]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file or directory"),
        (b"\x1f\x8bnot really gzip", "Unknown compression method"),
    ],
)
def test_an_unreadable_file_is_an_error_naming_it(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "decisions.log.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LogFileError, match=message) as raised:
        read(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LogFileError, match="Is a directory"):
        read(tmp_path)


def test_a_line_too_long_is_cut_and_its_rest_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logfiles, "MAX_LINE", 16)
    path = tmp_path / "decisions.log"
    path.write_bytes(b"x" * 100 + b"\n" + b'{"a": 1}\n')
    assert read(path) == ([b"x" * 16, b'{"a": 1}\n'], [])


def test_damaged_compressed_data_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log.2.gz"
    whole = bytearray(gzip.compress(bytes(range(256)) * 400))
    whole[len(whole) // 2] ^= 0xFF
    path.write_bytes(bytes(whole))
    with pytest.raises(LogFileError, match=f"^{path}: "):
        read(path)
