"""The shipped files: the config and the ISP practice rules load, and decide the key cases."""

from __future__ import annotations

import ipaddress
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.config.model import load_config, parse_config
from portguard.core.policy import Action, Connection, Direction, RuleSet
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import CONFIG_PATH, RULES_DIR, default_config_text


@cache
def shipped() -> RuleSet:
    return load_ruleset([RULES_DIR])


def conn(src: str, dst: str, dport: int, direction: str = "outbound") -> Connection:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Connection(s.version, int(s), int(d), dport, Direction(direction))


def test_shipped_config_text_is_the_file_and_valid() -> None:
    assert default_config_text() == CONFIG_PATH.read_text()
    config = parse_config(default_config_text(), CONFIG_PATH)
    assert config == load_config(CONFIG_PATH)
    assert config.rules.paths == (Path("/etc/portguard/rules.d"),)


def test_shipped_rules_load_in_order() -> None:
    ruleset = shipped()
    assert [(r.id, r.action) for r in ruleset.rules] == [
        ("submission", Action.ALLOW),
        ("smarthost", Action.ALLOW),
        ("business-25", Action.ALLOW),
        ("block-25", Action.REJECT),
        ("inbound-25-subscribers", Action.REJECT),
    ]
    assert {r.ruleset for r in ruleset.rules} == {"10-isp.toml"}
    assert ruleset.default.action is Action.ALLOW
    assert ruleset.sources == (RULES_DIR / "10-isp.toml", RULES_DIR / "lists" / "business.txt")


@pytest.mark.parametrize(
    ("src", "dst", "dport", "direction", "rule_id", "action"),
    [
        ("100.64.10.10", "198.51.100.25", 25, "outbound", "block-25", "reject"),
        ("2001:db8:64::10", "2001:db8::25", 25, "outbound", "block-25", "reject"),
        ("100.64.10.10", "198.51.100.26", 25, "outbound", "smarthost", "allow"),
        ("2001:db8:64::10", "2001:db8:25::26", 25, "outbound", "smarthost", "allow"),
        ("100.64.10.10", "198.51.100.25", 587, "outbound", "submission", "allow"),
        ("2001:db8:64::10", "2001:db8::25", 465, "outbound", "submission", "allow"),
        ("203.0.113.7", "198.51.100.25", 25, "outbound", "business-25", "allow"),
        ("2001:db8:b12::7", "2001:db8::25", 25, "outbound", "business-25", "allow"),
        ("192.0.2.1", "100.64.10.10", 25, "inbound", "inbound-25-subscribers", "reject"),
        ("2001:db8::1", "2001:db8:64::10", 25, "inbound", "inbound-25-subscribers", "reject"),
        ("192.0.2.1", "203.0.113.7", 25, "inbound", "default", "allow"),
        ("192.0.2.1", "198.51.100.25", 25, "outbound", "default", "allow"),
        ("100.64.10.10", "100.64.10.11", 25, "internal", "default", "allow"),
    ],
)
def test_key_decisions(
    src: str, dst: str, dport: int, direction: str, rule_id: str, action: str
) -> None:
    decision = shipped().decide(conn(src, dst, dport, direction))
    assert (decision.rule_id, decision.action) == (rule_id, Action(action))


# The shipped policy written out independently, with ipaddress, as an oracle.
SUBSCRIBERS = [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("2001:db8:64::/48")]
SMARTHOSTS = [ipaddress.ip_network("198.51.100.26"), ipaddress.ip_network("2001:db8:25::26")]
BUSINESS = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8:b12::/48")]


def oracle(src: str, dst: str, dport: int, direction: str) -> str:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)

    def inside(address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: list) -> bool:  # type: ignore[type-arg]
        return any(address.version == n.version and address in n for n in nets)

    if direction == "outbound":
        if dport in (465, 587):
            return "submission"
        if dport == 25 and inside(s, SUBSCRIBERS) and inside(d, SMARTHOSTS):
            return "smarthost"
        if dport == 25 and inside(s, BUSINESS):
            return "business-25"
        if dport == 25 and inside(s, SUBSCRIBERS):
            return "block-25"
    if direction == "inbound" and dport == 25 and inside(d, SUBSCRIBERS):
        return "inbound-25-subscribers"
    return "default"


def near(version: int) -> st.SearchStrategy[str]:
    """Addresses inside the policy's sets (either end of them included) or anywhere."""
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    nets = [n for n in SUBSCRIBERS + SMARTHOSTS + BUSINESS if n.version == version]
    inside = st.sampled_from(nets).flatmap(
        lambda n: st.integers(int(n.network_address), int(n.broadcast_address))
    )
    anywhere = st.integers(0, 2 ** (32 if version == 4 else 128) - 1)
    return st.one_of(inside, anywhere).map(lambda i: str(make(i)))


@given(
    st.sampled_from([4, 6]).flatmap(lambda v: st.tuples(near(v), near(v))),
    st.one_of(st.sampled_from([25, 465, 587]), st.integers(1, 65535)),
    st.sampled_from([d.value for d in Direction]),
)
def test_decisions_match_an_independent_oracle(
    addresses: tuple[str, str], dport: int, direction: str
) -> None:
    src, dst = addresses
    decision = shipped().decide(conn(src, dst, dport, direction))
    assert decision.rule_id == oracle(src, dst, dport, direction)
