"""TOML files with positions, and pydantic errors turned into the operator's words."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import AfterValidator, BeforeValidator, Field

from portguard.core.errors import Problem
from portguard.core.tomlsource import (
    MAX_NESTING,
    MIB,
    Spec,
    TextError,
    TomlSource,
    data_path,
    parse_toml,
    toml_type,
    toml_value,
    too_deep,
    validate,
)
from portguard.io.files import read_text


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(f"{value} is not positive")
    return value


class Inner(Spec):
    name: str
    size: Annotated[int, AfterValidator(_positive)] = 1


class Outer(Spec):
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    items: list[Inner] = Field(default=[])
    table: Inner | None = None


def problems(text: str) -> list[str]:
    source = parse_toml(Path("f.toml"), text)
    assert isinstance(source, TomlSource)
    result = validate(source, Outer)
    assert isinstance(result, list)
    return [p.format() for p in sorted(result, key=Problem.sort_key)]


def test_syntax_error_is_a_problem() -> None:
    result = parse_toml(Path("f.toml"), "x = [")
    assert isinstance(result, Problem)
    assert result.format().startswith("f.toml:1")


def test_valid_document_validates() -> None:
    source = parse_toml(Path("f.toml"), 'mode = "b"\n[[items]]\nname = "n"\nsize = 3\n')
    assert isinstance(source, TomlSource)
    assert validate(source, Outer) == Outer(mode="b", items=[Inner(name="n", size=3)])


def test_each_kind_of_error_in_words() -> None:
    text = (
        'mode = "c"\n'
        'flag = "yes"\n'
        "[[items]]\n"
        'name = "x"\n'
        "size = 0\n"
        "[[items]]\n"
        "size = 2\n"
        "[table]\n"
        'name = "t"\n'
        "nmae = 1\n"
        "colour = 2\n"
    )
    assert problems(text) == [
        "f.toml:1:1: mode: must be 'a' or 'b', not \"c\"",
        "f.toml:2:1: flag: must be true or false, not a string",
        "f.toml:5:1: size: 0 is not positive",
        "f.toml:6:1: missing required key 'name'",
        "f.toml:10:1: unknown key 'nmae' (did you mean 'name'?)",
        "f.toml:11:1: unknown key 'colour' (known keys: name, size)",
    ]


def test_wrong_container_types() -> None:
    assert problems("items = 3\ntable = [1]\n") == [
        "f.toml:1:1: items: must be an array, not an integer",
        "f.toml:2:1: table: must be a table, not an array",
    ]


def test_single_table_where_an_array_of_tables_belongs() -> None:
    assert problems('[items]\nname = "x"\n') == [
        "f.toml:1:1: items: must be an array of tables (write [[items]]), not a table"
    ]


def _as_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


class Frozen(Spec):
    """Arrays kept as tuples (how the daemon config keeps them)."""

    items: Annotated[tuple[Inner, ...], BeforeValidator(_as_tuple)] = ()


def test_a_tuple_of_tables_reads_like_an_array_of_tables() -> None:
    def located(text: str) -> list[str]:
        source = parse_toml(Path("f.toml"), text)
        assert isinstance(source, TomlSource)
        result = validate(source, Frozen)
        assert isinstance(result, list)
        return [p.format() for p in result]

    assert located('[items]\nname = "x"\n') == [
        "f.toml:1:1: items: must be an array of tables (write [[items]]), not a table"
    ]
    assert located('items = [{ name = "x", nmae = 1 }]') == [
        "f.toml:1:24: unknown key 'nmae' (did you mean 'name'?)"
    ]


def test_validate_hands_its_context_to_the_validators() -> None:
    seen: list[object] = []

    class Seen(Spec):
        def model_post_init(self, context: object, /) -> None:
            seen.append(context)

    source = parse_toml(Path("f.toml"), "")
    assert isinstance(source, TomlSource)
    validate(source, Seen, context="the file")
    assert seen == ["the file"]


def test_data_path_drops_pydantic_tags() -> None:
    data = {"rule": [{"src": "x"}]}
    assert data_path(("rule", 0, "src", 0), data) == ("rule", 0, "src")
    assert data_path(("rule", 0, "function-after[f()]", "src"), data) == ("rule", 0, "src")
    assert data_path(("rule", 0, "action"), data) == ("rule", 0, "action")
    assert data_path(("rule", 5, "id"), data) == ("rule",)


@pytest.mark.parametrize(
    ("value", "kind", "shown"),
    [
        (True, "a boolean", "true"),
        (3, "an integer", "3"),
        (2.5, "a float", "2.5"),
        ("s", "a string", '"s"'),
        ([1], "an array", "[1]"),
        ({"a": 1}, "a table", "{'a': 1}"),
        (date(2020, 1, 2), "a date", "2020-01-02"),
    ],
)
def test_toml_type_and_value(value: object, kind: str, shown: str) -> None:
    assert toml_type(value) == kind
    assert toml_value(value) == shown


def test_positions_are_scanned_only_when_asked() -> None:
    source = parse_toml(Path("f.toml"), "a = 1\n\nb = 2\n")
    assert isinstance(source, TomlSource)
    assert "positions" not in source.__dict__
    assert source.where(("b",)) == "f.toml:3"
    assert source.problem(("b", "c"), "m").format() == "f.toml:3:1: m"


def test_problems_carry_the_column_of_the_key_or_element() -> None:
    text = 'mode = "a"\nitems = [{ name = "x", size = -1 }]\n[table]\n  name = 5\n'
    assert problems(text) == [
        "f.toml:2:24: size: -1 is not positive",
        "f.toml:4:3: name: must be a string, not an integer",
    ]


# --- hostile files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("x = " + "[" * 10_000 + "]" * 10_000 + "\n", (1, 37)),
        ("a = 1\nx = " + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n", (2, 161)),
        ("a" + ".a" * 10_000 + " = 1\n", (1, 1)),
        ("[" + ".".join(["a"] * 100) + "]\n", (1, 1)),
        ("x = " + "[" * 40 + "]" * 40 + "\n", (1, 37)),  # tomllib parses it; still too deep
    ],
    ids=["arrays", "inline-tables", "dotted-key", "header", "arrays-40"],
)
def test_nesting_beyond_the_limit_is_a_located_problem(
    text: str, position: tuple[int, int]
) -> None:
    problem = parse_toml(Path("f.toml"), text)
    assert problem == Problem(
        Path("f.toml"), *position[:1], "tables and arrays nest deeper than 32 levels", position[1]
    )


def test_nesting_up_to_the_limit_is_fine() -> None:
    text = "x = " + "[" * (MAX_NESTING - 1) + "1" + "]" * (MAX_NESTING - 1) + "\n"
    assert isinstance(parse_toml(Path("f.toml"), text), TomlSource)
    assert not too_deep({"x": [[1]]}, 3) and too_deep({"x": [[1]]}, 2)
    assert not too_deep({"x": [[]]}, 2) and too_deep({"x": [[]]}, 1) and not too_deep({}, 0)


def test_read_text_reads_a_regular_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("caf\u00e9\n")
    assert read_text(tmp_path / "f", 100) == "caf\u00e9\n"


def test_read_text_refuses_large_special_and_binary_files(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (2 * MIB + 1))
    with pytest.raises(TextError, match="is larger than 2 MiB") as caught:
        read_text(tmp_path / "big", 2 * MIB)
    assert caught.value.line is None
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TextError, match="is not a regular file"):
        read_text(tmp_path / "fifo", 100)
    with pytest.raises(TextError, match="is not a regular file"):
        read_text(Path("/dev/zero"), 100)
    (tmp_path / "bin").write_bytes(b"ok\nab\x80c\n")
    with pytest.raises(TextError, match=r"not UTF-8 text \(byte 0x80\)") as caught:
        read_text(tmp_path / "bin", 100)
    assert caught.value.problem(Path("bin")).format() == "bin:2:3: not UTF-8 text (byte 0x80)"
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "nothere", 100)
