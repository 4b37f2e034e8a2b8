"""The TOML locator: key paths of tables, keys, inline tables and array elements -> lines."""

from __future__ import annotations

import tomllib

from hypothesis import given
from hypothesis import strategies as st

from portguard.core.sourcemap import SourceMap

DOC = '''# comment line
title = "x"   # trailing comment

[sets.subscribers]
cidrs = ["100.64.0.0/10", "2001:db8:64::/48"]
files = [
  "a.txt",   # first
  # a comment between elements
  "b.txt",
]

[[rule]]
id = "one"
dport = [25,
         "1000-2000"]

[[rule]]
id = "two"
limit = { rate = "30/minute", burst = 10 }
"quoted key" = 'literal'
a.b.c = 1
text = """multi
line ] with "quotes" and [brackets]"""
after = true

[ log ]
outputs = [{ type = "stdout" }, { type = "file", path = "x" },
  { type = "syslog", address = "udp://h:514" }]
when = 1979-05-27 07:32:00Z
'''


def smap() -> SourceMap:
    tomllib.loads(DOC)  # the locator is only used on valid TOML
    return SourceMap.scan(DOC)


def test_top_level_key() -> None:
    assert smap().position(("title",)) == (2, 1)


def test_table_header_and_keys() -> None:
    positions = smap()
    assert positions.line(("sets", "subscribers")) == 4
    assert positions.line(("sets",)) == 4
    assert positions.line(("sets", "subscribers", "cidrs")) == 5
    assert positions.position(("sets", "subscribers", "cidrs", 1)) == (5, 27)


def test_multi_line_array_elements_skip_comments() -> None:
    positions = smap()
    assert positions.line(("sets", "subscribers", "files")) == 6
    assert positions.line(("sets", "subscribers", "files", 0)) == 7
    assert positions.line(("sets", "subscribers", "files", 1)) == 9


def test_array_of_tables_are_indexed() -> None:
    positions = smap()
    assert positions.line(("rule", 0)) == 12
    assert positions.line(("rule", 0, "dport", 1)) == 15
    assert positions.line(("rule", 1)) == 17
    assert positions.line(("rule", 1, "id")) == 18


def test_inline_table_keys() -> None:
    positions = smap()
    assert positions.position(("rule", 1, "limit", "burst")) == (19, 31)


def test_quoted_and_dotted_keys() -> None:
    positions = smap()
    assert positions.line(("rule", 1, "quoted key")) == 20
    assert positions.line(("rule", 1, "a", "b", "c")) == 21
    assert positions.line(("rule", 1, "a")) == 21


def test_multi_line_string_does_not_confuse_the_scan() -> None:
    assert smap().line(("rule", 1, "after")) == 24


def test_arrays_of_inline_tables() -> None:
    positions = smap()
    assert positions.line(("log",)) == 26
    assert positions.position(("log", "outputs", 1, "path")) == (27, 50)
    assert positions.line(("log", "outputs", 2, "address")) == 28
    assert positions.line(("log", "when")) == 29


def test_locate_falls_back_to_the_nearest_parent() -> None:
    positions = smap()
    assert positions.position(("rule", 1, "missing")) is None
    assert positions.line(("rule", 1, "missing")) == 17
    assert positions.line(("rule", 0, "dport", 7)) == 14
    assert positions.locate(("nothing", "here")) == (1, 1)


def test_nested_array_of_tables_under_array_of_tables() -> None:
    text = "[[a]]\nx = 1\n[[a.b]]\ny = 2\n[[a]]\n[[a.b]]\n[[a.b]]\nz = 3\n[a.c]\nw = 4\n"
    tomllib.loads(text)
    positions = SourceMap.scan(text)
    assert positions.line(("a", 0, "b", 0, "y")) == 4
    assert positions.line(("a", 1, "b", 1, "z")) == 8
    assert positions.line(("a", 1, "c", "w")) == 10


def test_text_the_scanner_cannot_follow_keeps_what_it_found() -> None:
    positions = SourceMap.scan('a = 1\nb = "unterminated\nc = 3\n')
    assert positions.line(("a",)) == 1
    assert positions.position(("c",)) is None


keys = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
values = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\\\'),
        max_size=12,
    ).map(lambda t: f'"{t}"'),
    st.lists(st.integers(0, 99).map(str), max_size=4).map(lambda v: "[" + ", ".join(v) + "]"),
)


@given(st.dictionaries(keys, values, min_size=1, max_size=8), st.integers(0, 3))
def test_every_key_of_a_generated_document_is_on_its_own_line(
    entries: dict[str, str], padding: int
) -> None:
    lines = [f"{key} = {value}" for key, value in entries.items()]
    text = ("\n" * padding) + "\n".join(lines) + "\n"
    tomllib.loads(text)
    positions = SourceMap.scan(text)
    for number, key in enumerate(entries, start=padding + 1):
        assert positions.position((key,)) == (number, 1)


def test_deep_point_finds_where_the_limit_is_passed() -> None:
    assert SourceMap.deep_point("a = [[1]]\nb = [[[2]]]\n", 3) == (2, 8)
    assert SourceMap.deep_point("a = [[1]]\n", 3) is None
    assert SourceMap.deep_point("[a.b]\nc.d = 1\n", 3) == (2, 1)
    assert SourceMap.deep_point("x = " + "[" * 10_000, 5) == (1, 10)  # also in broken text


def test_a_scan_of_deep_text_keeps_what_it_found() -> None:
    text = "a = 1\nx = " + "[" * 10_000 + "]" * 10_000 + "\n"
    assert SourceMap.scan(text).position(("a",)) == (1, 1)
