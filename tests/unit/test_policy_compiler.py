"""Compiling rule-file text into a RuleSet: ordering, sets across files, defaults, versions."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from portguard.core.errors import HOST_KEPT, PolicyError
from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.model import Action, Connection, Direction, Limit
from portguard.core.policy.ruleset import RuleSet

SETS = """
[sets.subscribers]
cidrs = ["100.64.0.0/10", "2001:db8:64::/48"]

[sets.business]
files = ["lists/business.txt"]
"""

RULES = """
[[rule]]
id = "business-25"
src = "business"
dport = 25
direction = "outbound"
action = "allow"

[[rule]]
id = "block-25"
description = "no direct mail"
src = ["subscribers", "192.0.2.0/24"]
dport = [25, "2525-2526"]
direction = "outbound"
action = "reject"
"""

LISTS = {Path("/r/lists/business.txt"): "203.0.113.0/24\n"}


def reader(files: dict[Path, str]):  # type: ignore[no-untyped-def]
    def read(path: Path) -> str:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return files[path]

    return read


def compile_texts(texts: dict[str, str], lists: dict[Path, str] | None = None) -> RuleSet:
    files = [(Path("/r") / name, text) for name, text in texts.items()]
    return compile_ruleset(files, reader(LISTS if lists is None else lists))


def conn(src: str, dst: str, dport: int, direction: str = "outbound") -> Connection:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Connection(s.version, int(s), int(d), dport, Direction(direction))


def test_sets_are_visible_across_files_and_rules_keep_file_order() -> None:
    ruleset = compile_texts({"00-sets.toml": SETS, "10-rules.toml": RULES})
    assert [(r.id, r.ruleset) for r in ruleset.rules] == [
        ("business-25", "10-rules.toml"),
        ("block-25", "10-rules.toml"),
    ]
    assert ruleset.decide(conn("203.0.113.9", "198.51.100.1", 25)).rule_id == "business-25"
    assert ruleset.decide(conn("100.64.1.1", "198.51.100.1", 25)).rule_id == "block-25"
    assert ruleset.decide(conn("192.0.2.7", "198.51.100.1", 2526)).rule_id == "block-25"
    assert ruleset.decide(conn("198.51.100.7", "198.51.100.1", 25)).rule_id == "default"


def test_first_match_wins_across_files() -> None:
    early = '[[rule]]\nid = "early"\ndport = 25\naction = "log"\n'
    ruleset = compile_texts({"00-sets.toml": SETS, "05-early.toml": early, "10-r.toml": RULES})
    decision = ruleset.decide(conn("100.64.1.1", "198.51.100.1", 25))
    assert (decision.rule_id, decision.action) == ("early", Action.LOG)


def test_decision_reason_and_labels() -> None:
    ruleset = compile_texts({"00-sets.toml": SETS, "10-rules.toml": RULES})
    decision = ruleset.decide(conn("100.64.1.1", "198.51.100.1", 25))
    assert decision.action is Action.REJECT
    assert decision.ruleset == "10-rules.toml"
    assert decision.description == "no direct mail"
    assert decision.reason == (
        "matched rule 'block-25': src in set 'subscribers' or 192.0.2.0/24, "
        "dport in 25, 2525-2526, outbound"
    )


def test_default_action_and_default_decision() -> None:
    ruleset = compile_texts({"10-a.toml": '[default]\naction = "drop"\n'})
    assert ruleset.rules == ()
    decision = ruleset.decide(conn("192.0.2.1", "198.51.100.1", 25))
    assert decision == ruleset.default
    assert (decision.action, decision.rule_id, decision.ruleset) == (
        Action.DROP,
        "default",
        "default",
    )
    assert decision.reason == "no rule matched; default action"
    assert compile_texts({"10-a.toml": ""}).default.action is Action.ALLOW


def test_rule_without_conditions_matches_everything() -> None:
    ruleset = compile_texts({"10-a.toml": '[[rule]]\nid = "all"\naction = "log"\n'})
    decision = ruleset.decide(conn("2001:db8::1", "2001:db8::2", 1, "internal"))
    assert decision.rule_id == "all"
    assert decision.reason == "matched rule 'all': the rule matches every connection"


def test_disabled_rule_is_compiled_out_but_still_checked() -> None:
    text = '[[rule]]\nid = "off"\nenabled = false\naction = "drop"\n'
    ruleset = compile_texts({"10-a.toml": text})
    assert ruleset.rules == () and ruleset.disabled == ("off",)
    broken = '[[rule]]\nid = "off"\nenabled = false\nsrc = "nosuchset"\naction = "drop"\n'
    with pytest.raises(PolicyError, match="unknown set 'nosuchset'"):
        compile_texts({"10-a.toml": broken})


def test_version_covers_rule_and_list_files() -> None:
    texts = {"00-sets.toml": SETS, "10-rules.toml": RULES}
    first = compile_texts(texts)
    assert len(first.version) == 12 and int(first.version, 16) >= 0
    assert compile_texts(texts).version == first.version
    changed = {Path("/r/lists/business.txt"): "203.0.113.0/25\n"}
    assert compile_texts(texts, changed).version != first.version
    assert first.sources == (
        Path("/r/00-sets.toml"),
        Path("/r/10-rules.toml"),
        Path("/r/lists/business.txt"),
    )


def test_a_list_file_shared_by_two_sets_is_read_once() -> None:
    reads: list[Path] = []

    def read(path: Path) -> str:
        reads.append(path)
        return "192.0.2.0/24\n"

    text = '[sets.a]\nfiles = ["l.txt"]\n[sets.b]\nfiles = ["l.txt"]\n'
    ruleset = compile_ruleset([(Path("/r/10-a.toml"), text)], read)
    assert reads == [Path("/r/l.txt")]
    assert ruleset.sources == (Path("/r/10-a.toml"), Path("/r/l.txt"))


def test_unknown_sets_are_not_reported_while_a_file_has_a_syntax_error() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_texts({"00-sets.toml": "[sets.subscribers\n", "10-rules.toml": RULES})
    assert len(caught.value.messages) == 1
    assert "TOML syntax error" in caught.value.messages[0]


def test_every_error_at_once_and_nothing_partial() -> None:
    text = RULES.replace('"reject"', '"deny"') + '\n[[rule]]\nid = "business-25"\naction = 1\n'
    with pytest.raises(PolicyError) as caught:
        compile_texts({"10-rules.toml": text})
    assert caught.value.messages == [
        "/r/10-rules.toml:4:1: src: unknown set 'business'",
        "/r/10-rules.toml:12:8: src: unknown set 'subscribers'",
        "/r/10-rules.toml:15:1: action: must be 'allow', 'drop', 'reject' or 'log', not \"deny\"",
        "/r/10-rules.toml:18:1: duplicate rule id 'business-25'"
        " (first defined at /r/10-rules.toml:3)",
        "/r/10-rules.toml:19:1: action: must be 'allow', 'drop', 'reject' or 'log', not 1",
    ]


def test_a_reload_reuses_unchanged_list_files_and_parses_changed_ones() -> None:
    text = '[sets.b]\nfiles = ["b.txt"]\n[[rule]]\nid = "b"\nsrc = "b"\naction = "allow"\n'
    files = [(Path("/r/10-a.toml"), text)]
    first = compile_ruleset(files, reader({Path("/r/b.txt"): "192.0.2.0/24\n"}))
    again = compile_ruleset(files, reader({Path("/r/b.txt"): "192.0.2.0/24\n"}), previous=first)
    assert again.lists[Path("/r/b.txt")] is first.lists[Path("/r/b.txt")]
    assert again.version == first.version
    changed = compile_ruleset(
        files, reader({Path("/r/b.txt"): "198.51.100.0/24\n"}), previous=first
    )
    assert changed.lists[Path("/r/b.txt")] is not first.lists[Path("/r/b.txt")]
    assert changed.decide(conn("198.51.100.1", "192.0.2.9", 25)).rule_id == "b"
    assert changed.decide(conn("192.0.2.1", "192.0.2.9", 25)).rule_id == "default"


HOSTS = (
    '[sets.relay]\nhosts = ["smtp.example.net"]\n'
    '[[rule]]\nid = "r"\ndst = "relay"\naction = "allow"\n'
)


def test_a_host_that_stops_resolving_keeps_its_addresses_on_a_reload() -> None:
    files = [(Path("/r/10-a.toml"), HOSTS)]
    first = compile_ruleset(files, reader({}), resolve=lambda name: ["198.51.100.26"])

    def down(name: str) -> list[str]:
        raise OSError(-3, "Temporary failure in name resolution")

    with pytest.raises(PolicyError, match="does not resolve"):
        compile_ruleset(files, reader({}), resolve=down)  # a first load fails
    again = compile_ruleset(files, reader({}), resolve=down, previous=first)
    assert again.resolved == {"smtp.example.net": ("198.51.100.26",)}
    assert [w.format() for w in again.warnings] == [
        '/r/10-a.toml:2:10: hosts: "smtp.example.net" did not resolve'
        " (Temporary failure in name resolution); kept 198.51.100.26"
    ]
    assert [w.kind for w in again.warnings] == [HOST_KEPT]  # what the start's event matches on
    assert again.decide(conn("192.0.2.1", "198.51.100.26", 25)).rule_id == "r"


def test_the_version_follows_the_resolved_addresses() -> None:
    files = [(Path("/r/10-a.toml"), HOSTS)]
    one = compile_ruleset(files, reader({}), resolve=lambda name: ["198.51.100.26"])
    same = compile_ruleset(files, reader({}), resolve=lambda name: ["198.51.100.26"])
    moved = compile_ruleset(files, reader({}), resolve=lambda name: ["198.51.100.27"])
    assert one.version == same.version != moved.version
    assert moved.decide(conn("192.0.2.1", "198.51.100.27", 25)).rule_id == "r"


def test_limits_compile_with_their_defaults() -> None:
    text = (
        '[[rule]]\nid = "a"\naction = "allow"\nlimit = { rate = "30/minute" }\n'
        '[[rule]]\nid = "b"\naction = "log"\n'
        'limit = { rate = "2/second", burst = 7, per = "prefix", prefix6 = 48, exceed = "drop" }\n'
        '[[rule]]\nid = "c"\naction = "allow"\nlimit = { rate = "100/hour", per = "rule" }\n'
    )
    a, b, c = (rule.limit for rule in compile_texts({"10-a.toml": text}).rules)
    assert a == Limit("30/minute", 0.5, 30, "src", 32, 64, Action.REJECT)  # IPv6: its /64
    assert a is not None and a.max_buckets == 65_536
    assert b == Limit("2/second", 2.0, 7, "prefix", 24, 48, Action.DROP)
    assert c is not None and (c.per, c.prefix4, c.prefix6, c.burst) == ("rule", 0, 0, 100)
    assert a.describe() == "30/minute per src, burst 30, exceed reject"
    assert b.describe() == "2/second per src prefix (/24, /48), burst 7, exceed drop"


def test_limit_prefix6_per_src_and_max_buckets() -> None:
    text = (
        '[[rule]]\nid = "a"\naction = "allow"\n'
        'limit = { rate = "30/minute", prefix6 = 128, max_buckets = 500 }\n'
    )
    [a] = (rule.limit for rule in compile_texts({"10-a.toml": text}).rules)
    assert a is not None and (a.per, a.prefix4, a.prefix6, a.max_buckets) == ("src", 32, 128, 500)
    assert a == Limit("30/minute", 0.5, 30, "src", 32, 128, Action.REJECT, 7)  # not its identity


def test_log_false_and_every_direction() -> None:
    text = (
        '[[rule]]\nid = "quiet"\ndirection = "internal"\naction = "allow"\nlog = false\n'
        '[[rule]]\nid = "transit"\ndirection = "external"\naction = "drop"\n'
    )
    ruleset = compile_texts({"10-a.toml": text})
    quiet = ruleset.decide(conn("192.0.2.1", "192.0.2.2", 25, "internal"))
    assert (quiet.rule_id, quiet.log) == ("quiet", False)
    transit = ruleset.decide(conn("192.0.2.1", "192.0.2.2", 25, "external"))
    assert (transit.rule_id, transit.log) == ("transit", True)
    assert ruleset.decide(conn("192.0.2.1", "192.0.2.2", 25, "outbound")).rule_id == "default"
    assert ruleset.rules[0].index == 0 and ruleset.rules[1].path == Path("/r/10-a.toml")
