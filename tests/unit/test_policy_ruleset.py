"""decide() and explain(): one matching function, so they always agree."""

from __future__ import annotations

import ipaddress
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.core.policy import Condition, Connection, Direction, RuleSet
from portguard.core.policy.addresses import AddressSet, parse_network
from portguard.core.policy.model import Action, Decision
from portguard.core.policy.ports import PortSet
from portguard.core.policy.ruleset import (
    MAX_CANDIDATES,
    CompiledRule,
    first_mismatch,
    mismatch_reason,
)
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import RULES_DIR


@cache
def shipped() -> RuleSet:
    return load_ruleset([RULES_DIR])


def conn(src: str, dst: str, dport: int, direction: str = "outbound") -> Connection:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Connection(s.version, int(s), int(d), dport, Direction(direction))


def rule(**conditions: object) -> CompiledRule:
    decision = Decision(Action.DROP, "r", "f.toml", "", "matched")
    fields: dict[str, object] = {"direction": None, "dport": None, "src": None, "dst": None}
    fields.update(conditions)
    return CompiledRule("r", "f.toml", "", Action.DROP, decision=decision, **fields)  # type: ignore[arg-type]


def addresses(label: str, *cidrs: str) -> AddressSet:
    return AddressSet.from_networks(label, [parse_network(c) for c in cidrs])


def test_first_mismatch_checks_direction_then_dport_then_src_then_dst() -> None:
    full = rule(
        direction=Direction.OUTBOUND,
        dport=PortSet.from_ranges([(25, 25)]),
        src=addresses("set 'a'", "192.0.2.0/24"),
        dst=addresses("set 'b'", "198.51.100.0/24"),
    )
    assert first_mismatch(full, conn("203.0.113.1", "203.0.113.2", 80, "inbound")) is (
        Condition.DIRECTION
    )
    assert first_mismatch(full, conn("203.0.113.1", "203.0.113.2", 80)) is Condition.DPORT
    assert first_mismatch(full, conn("203.0.113.1", "203.0.113.2", 25)) is Condition.SRC
    assert first_mismatch(full, conn("192.0.2.1", "203.0.113.2", 25)) is Condition.DST
    assert first_mismatch(full, conn("192.0.2.1", "198.51.100.2", 25)) is None


def test_rule_without_conditions_never_mismatches() -> None:
    assert first_mismatch(rule(), conn("2001:db8::1", "2001:db8::2", 9, "external")) is None


def test_mismatch_reasons_in_words() -> None:
    full = rule(
        direction=Direction.OUTBOUND,
        dport=PortSet.from_ranges([(465, 465), (587, 587)]),
        src=addresses("set 'business'", "203.0.113.0/24"),
        dst=addresses("198.51.100.26", "198.51.100.26"),
    )
    c = conn("100.64.10.10", "198.51.100.25", 25, "inbound")
    assert mismatch_reason(full, c, Condition.DIRECTION) == (
        "direction is inbound, rule wants outbound"
    )
    assert mismatch_reason(full, c, Condition.DPORT) == "dport 25 is not in 465, 587"
    assert mismatch_reason(full, c, Condition.SRC) == ("src 100.64.10.10 is not in set 'business'")
    assert mismatch_reason(full, c, Condition.DST) == "dst 198.51.100.25 is not in 198.51.100.26"
    single = rule(dport=PortSet.from_ranges([(25, 25)]))
    assert mismatch_reason(single, conn("::1", "::2", 80), Condition.DPORT) == "dport 80 is not 25"
    with pytest.raises(ValueError, match="has no src condition"):
        mismatch_reason(rule(), c, Condition.SRC)


def test_explain_lists_rules_up_to_the_deciding_one() -> None:
    explanation = shipped().explain(conn("100.64.10.10", "198.51.100.25", 25))
    assert [(c.rule_id, c.matched, c.reason) for c in explanation.checks] == [
        ("submission", False, "dport 25 is not in 587, 465"),
        ("smarthost", False, "dst 198.51.100.25 is not in set 'smarthosts'"),
        ("business-25", False, "src 100.64.10.10 is not in set 'business'"),
        ("block-25", True, "src in set 'subscribers', dport 25, outbound"),
    ]
    assert explanation.checks[1].condition is Condition.DST
    assert explanation.decision.rule_id == "block-25"


def test_explain_with_no_match_tries_every_rule() -> None:
    ruleset = shipped()
    explanation = ruleset.explain(conn("192.0.2.1", "198.51.100.1", 80, "internal"))
    assert len(explanation.checks) == len(ruleset.rules)
    assert not any(check.matched for check in explanation.checks)
    assert explanation.decision is ruleset.default


addresses4 = st.one_of(
    st.sampled_from(["100.64.10.10", "198.51.100.26", "203.0.113.7", "192.0.2.1", "100.127.0.1"]),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
)
addresses6 = st.one_of(
    st.sampled_from(["2001:db8:64::10", "2001:db8:25::26", "2001:db8:b12::7", "2001:db8::1"]),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
)
connections = st.one_of(addresses4.map(lambda a: (a, 4)), addresses6.map(lambda a: (a, 6))).flatmap(
    lambda src: st.builds(
        conn,
        st.just(src[0]),
        addresses4 if src[1] == 4 else addresses6,
        st.one_of(st.sampled_from([25, 465, 587]), st.integers(1, 65535)),
        st.sampled_from([d.value for d in Direction]),
    )
)


@given(connections)
def test_decide_and_explain_agree_on_the_shipped_policy(connection: Connection) -> None:
    ruleset = shipped()
    decision = ruleset.decide(connection)
    explanation = ruleset.explain(connection)
    assert explanation.decision == decision
    matched = [check for check in explanation.checks if check.matched]
    if decision.rule_id == "default":
        assert matched == [] and len(explanation.checks) == len(ruleset.rules)
    else:
        assert [check.rule_id for check in matched] == [decision.rule_id]
        assert explanation.checks[-1].matched
    for check in explanation.checks:
        assert check.matched == (check.condition is None)


def test_direction_given_as_plain_text_still_matches() -> None:
    c = conn("100.64.10.10", "198.51.100.25", 25)
    as_text = Connection(c.version, c.src, c.dst, c.dport, "outbound")  # type: ignore[arg-type]
    assert shipped().decide(as_text) == shipped().decide(c)


def test_unhooked_rules_never_match() -> None:
    ruleset = shipped()
    assert ruleset.unhooked([25, 465, 587]) == ()
    assert [r.id for r in ruleset.unhooked([25])] == ["submission"]
    assert [r.id for r in ruleset.unhooked([587])] == [
        "smarthost",
        "business-25",
        "block-25",
        "inbound-25-subscribers",
    ]


@given(connections)
def test_explain_all_lists_every_matching_rule_and_agrees_with_decide(
    connection: Connection,
) -> None:
    ruleset = shipped()
    everything = ruleset.explain(connection, every=True)
    assert len(everything.checks) == len(ruleset.rules) and everything.every
    matching = [rule.id for rule in ruleset.rules if first_mismatch(rule, connection) is None]
    assert [check.rule_id for check in everything.matches] == matching
    assert everything.decision == ruleset.decide(connection)
    first = ruleset.explain(connection)
    assert everything.checks[: len(first.checks)] == first.checks
    rule = ruleset.match(connection)
    assert (rule.decision if rule else ruleset.default) == ruleset.decide(connection)


def test_explain_all_on_a_connection_that_two_rules_match() -> None:
    explanation = shipped().explain(conn("100.64.10.10", "198.51.100.26", 25), every=True)
    assert [check.rule_id for check in explanation.matches] == ["smarthost", "block-25"]
    assert explanation.decision.rule_id == "smarthost"
    explanation = shipped().explain(conn("2001:db8:64::1", "2001:db8::25", 25), every=True)
    assert [(c.rule_id, c.matched) for c in explanation.checks] == [
        ("submission", False),
        ("smarthost", False),
        ("business-25", False),
        ("block-25", True),
        ("inbound-25-subscribers", False),
    ]


def test_where_locates_each_rule_in_its_file() -> None:
    ruleset = shipped()
    lines = [ruleset.where(rule) for rule in ruleset.rules]
    assert lines == [(RULES_DIR / "10-isp.toml", line, 1) for line in (29, 36, 45, 53, 61)]
    loose = rule()  # built by hand: no file to point at
    assert ruleset.where(loose) == (Path("f.toml"), None, None)


@given(
    src=st.integers(0, 2**32 - 1),
    dst=st.integers(0, 2**32 - 1),
    dport=st.sampled_from([25, 465, 587, 2525, 80]),
    direction=st.sampled_from(list(Direction)),
)
def test_first_match_tries_only_candidates_and_agrees_with_a_full_scan(
    src: int, dst: int, dport: int, direction: Direction
) -> None:
    """The gate's indexed match against every rule tried in order with `first_mismatch`."""
    ruleset = shipped()
    connection = Connection(4, src, dst, dport, direction)
    scanned = next((r for r in ruleset.rules if first_mismatch(r, connection) is None), None)
    assert ruleset.first_match(4, src, dst, dport, direction) is scanned
    assert ruleset.match(connection) is scanned


def test_candidates_are_remembered_up_to_a_bound() -> None:
    ruleset = load_ruleset([RULES_DIR])
    for port in range(MAX_CANDIDATES + 10):
        ruleset.first_match(4, 1, 2, port, Direction.OUTBOUND)
    assert len(ruleset._candidates) == MAX_CANDIDATES
    outbound_25 = ruleset.first_match(4, 0x64400A0A, 0xC6336419, 25, Direction.OUTBOUND)
    assert outbound_25 is not None and outbound_25.id == "block-25"
