"""Located problems and the errors that carry them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from portguard.core.errors import (
    ConfigError,
    PolicyError,
    Problem,
    SourceError,
    shown,
    toml_syntax_problem,
    unexpected,
)


def test_problem_format_with_and_without_position() -> None:
    assert Problem(Path("a.toml"), 3, "bad").format() == "a.toml:3: bad"
    assert Problem(Path("a.toml"), 3, "bad", 7).format() == "a.toml:3:7: bad"
    assert Problem(Path("dir"), None, "empty").format() == "dir: empty"


def test_error_sorts_by_file_then_line_and_keeps_plain_messages_last() -> None:
    error = PolicyError(
        [
            Problem(Path("b.toml"), 1, "b1"),
            "no rule paths given",
            Problem(Path("a.toml"), 10, "a10"),
            Problem(Path("a.toml"), 2, "a2"),
            Problem(Path("a.toml"), None, "a-file"),
        ]
    )
    assert error.messages == [
        "a.toml: a-file",
        "a.toml:2: a2",
        "a.toml:10: a10",
        "b.toml:1: b1",
        "no rule paths given",
    ]
    assert str(error) == "\n".join(error.messages)
    assert isinstance(error, SourceError)
    assert not isinstance(error, ConfigError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a = \n", "x.toml:1:5: TOML syntax error: Invalid value"),
        ("[x\n", "x.toml:1:3: TOML syntax error: Expected ']' at the end of a table declaration"),
        ('a = 1\nb = "open', "x.toml:2: TOML syntax error: Unterminated string"),
    ],
)
def test_toml_syntax_problem_takes_tomllib_position(text: str, expected: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as caught:
        tomllib.loads(text)
    assert toml_syntax_problem(Path("x.toml"), text, caught.value).format() == expected


def test_toml_syntax_problem_without_position() -> None:
    problem = toml_syntax_problem(Path("x.toml"), "", ValueError("odd"))
    assert problem.format() == "x.toml: TOML syntax error: odd"


def test_problem_as_dict_and_plain_messages() -> None:
    assert Problem(Path("a.toml"), 3, "bad", 7).as_dict() == {
        "path": "a.toml",
        "line": 3,
        "col": 7,
        "message": "bad",
    }
    error = PolicyError([Problem(Path("a.toml"), None, "gone"), "no rule paths given"])
    assert error.plain == ("no rule paths given",)
    assert error.problems == (Problem(Path("a.toml"), None, "gone"),)


def test_a_message_from_a_hostile_file_is_safe_for_a_terminal() -> None:
    problem = Problem(Path("a\x1b.toml"), 2, 'bad "\x1b[2J\x00"\nnext' + "x" * 1000, 3)
    line = problem.format()
    assert line.startswith('a\\x1b.toml:2:3: bad "\\x1b[2J\\x00"\\x0anext')
    assert line.endswith("... (1,016 characters)") and len(line) < 600
    assert shown("tab\tstays") == "tab\tstays"


def test_unexpected_names_the_file_and_the_exception() -> None:
    assert unexpected(Path("a.toml"), KeyError("k")).format() == (
        "a.toml: unexpected error while loading: KeyError: 'k'"
    )
