"""Compiling rule-file text into a RuleSet: ordering, sets across files, defaults, versions."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from portguard.errors import PolicyError
from portguard.policy.compiler import compile_ruleset
from portguard.policy.model import Action, Connection, Direction
from portguard.policy.ruleset import RuleSet

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
