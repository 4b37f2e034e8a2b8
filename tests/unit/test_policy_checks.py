"""Checks across files on the raw data: unions of sets and their cycles, limits, references."""

from __future__ import annotations

from pathlib import Path

from portguard.core.policy.checks import Edge, cross_file_problems, find_cycles
from portguard.core.tomlsource import TomlSource, parse_toml


def source(name: str, text: str) -> TomlSource:
    parsed = parse_toml(Path("/r") / name, text)
    assert isinstance(parsed, TomlSource)
    return parsed


def problems(*texts: str, complete: bool = True) -> list[str]:
    sources = [source(f"{i}0-x.toml", text) for i, text in enumerate(texts, start=1)]
    return [p.format() for p in cross_file_problems(sources, complete)]


def edges(*pairs: str) -> dict[str, list[Edge]]:
    anywhere = source("x.toml", "")
    result: dict[str, list[Edge]] = {}
    for pair in pairs:
        a, b = pair.split(">")
        result.setdefault(a, []).append((a, b, anywhere, ()))
    return result


def names(cycles: list[list[Edge]]) -> list[str]:
    return [" ".join([cycle[0][0], *(edge[1] for edge in cycle)]) for cycle in cycles]


def test_find_cycles_reports_each_cycle_once() -> None:
    assert names(find_cycles(edges("a>b", "b>c", "c>a"))) == ["a b c a"]
    assert names(find_cycles(edges("a>a"))) == ["a a"]
    assert names(find_cycles(edges("a>b", "b>a", "b>c", "c>b"))) == ["a b a", "b c b"]
    assert find_cycles(edges("a>b", "a>c", "b>d", "c>d")) == []  # a diamond is no cycle


def test_a_cycle_names_its_members_and_where_they_are() -> None:
    first = '[sets.all]\nsets = ["staff"]\n'
    second = '[sets.staff]\ncidrs = ["192.0.2.0/24"]\nsets = ["all"]\n'
    assert problems(first, second) == [
        "/r/20-x.toml:3:9: sets: cycle between sets: all -> staff -> all (also at /r/10-x.toml:2)"
    ]


def test_union_members_must_exist_but_only_once_every_file_parsed() -> None:
    text = '[sets.customers]\nsets = ["busines"]\n[sets.business]\ncidrs = ["192.0.2.0/24"]\n'
    assert problems(text) == [
        "/r/10-x.toml:2:9: sets: unknown set 'busines' (did you mean 'business'?)"
    ]
    assert problems(text, complete=False) == []


def test_empty_set_counts_every_kind_of_member() -> None:
    assert problems("[sets.a]\nsets = []\nhosts = []\n") == [
        "/r/10-x.toml:1:1: set 'a' is empty: give it 'cidrs', 'files', 'hosts' or 'sets'"
    ]
    assert problems('[sets.a]\nhosts = ["mx.example.net"]\n') == []


def test_limit_checks_on_the_raw_rule() -> None:
    text = (
        '[[rule]]\nid = "a"\naction = "drop"\nlimit = { rate = "1/second" }\n'
        '[[rule]]\nid = "b"\naction = "allow"\n'
        'limit = { rate = "1/second", prefix4 = 24 }\n'
        '[[rule]]\nid = "c"\naction = "log"\n'
        'limit = { rate = "1/second", per = "prefix", prefix4 = 24, prefix6 = 56 }\n'
        '[[rule]]\nid = "d"\naction = "allow"\n'
        'limit = { rate = "1/second", prefix6 = 56, max_buckets = 10 }\n'
        '[[rule]]\nid = "e"\naction = "allow"\n'
        'limit = { rate = "1/second", per = "rule", prefix6 = 56, max_buckets = 10 }\n'
    )
    assert problems(text) == [
        '/r/10-x.toml:4:1: limit: only a rule that allows (action "allow" or "log") can have'
        ' a limit, not action "drop"',
        '/r/10-x.toml:8:30: prefix4: applies only with per = "prefix"',
        '/r/10-x.toml:20:44: prefix6: applies only with per = "src" or "prefix"',
        '/r/10-x.toml:20:58: max_buckets: applies only with per = "src" or "prefix"',
    ]


def test_find_cycles_follows_a_chain_deeper_than_the_recursion_limit() -> None:
    chain = [f"s{i}>s{i + 1}" for i in range(5000)]
    assert find_cycles(edges(*chain)) == []
    cycles = find_cycles(edges(*chain, "s5000>s0"))
    assert len(cycles) == 1 and len(cycles[0]) == 5001
