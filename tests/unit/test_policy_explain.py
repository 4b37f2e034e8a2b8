"""The text of `portguard explain`."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from portguard.core.policy import Connection, Direction, RuleSet, format_explanation
from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.explain import format_connection, format_resolved
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import RULES_DIR


def conn(src: str, dst: str, dport: int, direction: str = "outbound") -> Connection:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Connection(s.version, int(s), int(d), dport, Direction(direction))


def test_format_connection_brackets_ipv6() -> None:
    assert format_connection(conn("192.0.2.1", "198.51.100.2", 25)) == (
        "192.0.2.1 -> 198.51.100.2:25 (ipv4, outbound)"
    )
    assert format_connection(conn("2001:db8::1", "2001:db8::2", 587, "inbound")) == (
        "2001:db8::1 -> [2001:db8::2]:587 (ipv6, inbound)"
    )


def test_explanation_of_a_blocked_connection() -> None:
    ruleset = load_ruleset([RULES_DIR])
    text = format_explanation(ruleset.explain(conn("100.64.10.10", "198.51.100.25", 25)))
    assert text.splitlines() == [
        "connection: 100.64.10.10 -> 198.51.100.25:25 (ipv4, outbound)",
        "    1. submission   no match  dport 25 is not in 587, 465  [10-isp.toml]",
        "    2. smarthost    no match  dst 198.51.100.25 is not in set 'smarthosts'  [10-isp.toml]",
        "    3. business-25  no match  src 100.64.10.10 is not in set 'business'  [10-isp.toml]",
        "    4. block-25     match     src in set 'subscribers', dport 25, outbound  [10-isp.toml]",
        "decision: reject by rule 'block-25' (10-isp.toml)",
        "  subscribers may not send mail directly to other networks' port 25"
        " (M3AAWG Managing Port 25)",
    ]


def test_explanation_of_the_default_and_disabled_rules() -> None:
    text = '[[rule]]\nid = "off"\nenabled = false\naction = "drop"\n'
    ruleset = compile_ruleset([(Path("/r/10-a.toml"), text)], lambda p: "")
    lines = format_explanation(ruleset.explain(conn("192.0.2.1", "198.51.100.2", 25))).splitlines()
    assert lines[1:] == [
        "decision: allow (the policy has no rules; default action)",
        "disabled rules, not tried: off",
    ]


LIMITED = """
[sets.relays]
hosts = ["smtp.example.net"]

[[rule]]
id = "relay"
description = "through the relays, 5 a minute"
dst = "relays"
dport = 25
action = "allow"
log = false
limit = { rate = "5/minute", burst = 5 }

[[rule]]
id = "block-25"
dport = 25
action = "reject"
"""


def limited() -> RuleSet:
    return compile_ruleset(
        [(Path("/r/10-a.toml"), LIMITED)], lambda p: "", resolve=lambda n: ["198.51.100.26"]
    )


def test_explain_shows_the_limit_logging_and_resolved_hosts() -> None:
    ruleset = limited()
    explanation = ruleset.explain(conn("192.0.2.1", "198.51.100.26", 25))
    assert format_explanation(explanation, ruleset.resolved).splitlines() == [
        "connection: 192.0.2.1 -> 198.51.100.26:25 (ipv4, outbound)",
        "    1. relay  match     dst in set 'relays', dport 25; subject to limit 5/minute per src,"
        " burst 5, exceed reject  [10-a.toml]",
        "decision: allow by rule 'relay' (10-a.toml)",
        "  past its limit the rule gives reject"
        " (explain takes no token: the daemon's buckets decide)",
        "  through the relays, 5 a minute",
        "  not logged (log = false)",
        "host smtp.example.net: 198.51.100.26",
    ]


def test_explain_all_marks_matches_that_an_earlier_rule_decides() -> None:
    ruleset = limited()
    text = format_explanation(ruleset.explain(conn("192.0.2.1", "198.51.100.26", 25), True))
    assert text.splitlines()[2] == (
        "    2. block-25  match     dport 25 (not reached: an earlier rule decides)  [10-a.toml]"
    )
    assert format_resolved({}) == []
