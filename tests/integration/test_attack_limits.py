"""Attacks on the rate limits, through the real daemon in the namespace lab.

A spambot that hits a limit has two cheap ways out: rotate its IPv6 source within its /64
(privacy addresses, RFC 8981: every host has a whole /64 to pick from), or flood spoofed
sources until its depleted bucket is evicted to make room. Both must leave it limited.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon
from lab.peers import python_env

DEAD_END = "198.51.100.99"  # routed to `net`, where nothing answers: spoofed SYNs end there
FLOOD_FIRST = "100.80.0.0"  # spoofed sources: 100.80.0.0/12, a million addresses
OLD_SHARED_CAPACITY = 100_000  # the buckets all rules shared before the per-rule tables
MAX_BUCKETS = 65_536  # the per-rule default (docs/rules.md)
FLOOD_ROUND = 20_000  # spoofed sources a synflood run sends one SYN each from
FLOOD_RATE = 5_000  # SYNs a second, paced; the queue may drop some: rounds repeat until done
LIVENESS = 600.0  # seconds: a generous bound for the flood's decisions, not a speed claim

SIX_OF_ONE_64 = """
[[rule]]
id = "sub-mx"
src = "2001:db8:64:10::/64"
dst = "2001:db8:25::25"
dport = [25]
direction = "outbound"
action = "allow"
limit = { rate = "1/hour", burst = 2, per = "src", exceed = "reject" }
"""

BOT_AND_FLOOD = f"""
[[rule]]
id = "bot-25"
src = "100.64.10.0/24"
dst = "{a.MX.v4}"
dport = [25]
direction = "outbound"
action = "allow"
limit = {{ rate = "1/hour", burst = 2, per = "src", exceed = "reject" }}

[[rule]]
id = "flood-25"
src = "100.80.0.0/12"
dst = "{DEAD_END}"
dport = [25]
direction = "outbound"
action = "allow"
log = false
limit = {{ rate = "1/hour", burst = 1, per = "src", exceed = "drop" }}
"""

SMALL_TABLE = f"""
[[rule]]
id = "bot-25"
src = "100.64.0.0/10"
dst = ["{a.MX.v4}", "{DEAD_END}"]
dport = [25]
direction = "outbound"
action = "allow"
limit = {{ rate = "1/hour", burst = 2, per = "src", exceed = "reject", max_buckets = 4 }}
"""


@pytest.fixture
def extra_addresses(lab: Lab) -> Iterator[list[str]]:
    """Addresses added to the subscriber's interface for one test, removed after it."""
    added: list[str] = []
    yield added
    for address in added:
        prefix = "64" if ":" in address else "24"
        lab.run("sub", ["ip", "addr", "del", f"{address}/{prefix}", "dev", a.SUB_IF])


def add_address(lab: Lab, added: list[str], address: str) -> None:
    prefix, extra = ("64", ["nodad"]) if ":" in address else ("24", [])
    argv = ["ip", "addr", "add", f"{address}/{prefix}", "dev", a.SUB_IF, *extra]
    lab.run("sub", argv, check=True)
    added.append(address)


def started(lab: Lab, tmp_path: Path, rules: str) -> LabDaemon:
    path = tmp_path / "limits.toml"
    path.write_text(rules)
    daemon = LabDaemon(lab, rules=[path])
    daemon.start()
    return daemon


def connect(lab: Lab, dst: str, source: str | None = None) -> str:
    return lab.send_mail("sub", dst, 25, timeout=3, connect_only=True, source=source).outcome


def status(lab: Lab, daemon: LabDaemon) -> dict[str, Any]:
    argv = lab.python("portguard", "status", "--config", str(daemon.config), "--json")
    proc = lab.run("gw", argv, capture_output=True, text=True, timeout=30, env=python_env())
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def hits(doc: dict[str, Any], rule: str) -> int:
    return sum(int(row["hits"]) for row in doc["rules"] if row["id"] == rule)


def spoof(lab: Lab, first: str, sources: int, dst: str = DEAD_END) -> None:
    """One SYN from each of `sources` consecutive addresses from `first` to dst:25."""
    argv = lab.python("lab.synflood", "--src", first, "--dst", dst, "--dport", "25",
                      "--rate", str(FLOOD_RATE), "--seconds", str(sources / FLOOD_RATE),
                      "--sources", str(sources))  # fmt: skip
    proc = lab.run("sub", argv, capture_output=True, text=True, timeout=120, env=python_env())
    assert proc.returncode == 0, proc.stderr


def flood_until_decided(lab: Lab, daemon: LabDaemon, rule: str, decisions: int) -> int:
    """Spoofed sources, each new, until `rule` decided at least `decisions` connections
    (SYNs the queue dropped are simply replaced by more); the decisions made."""
    deadline, first = time.monotonic() + LIVENESS, ipaddress.IPv4Address(FLOOD_FIRST)
    while (done := hits(status(lab, daemon), rule)) < decisions:
        assert time.monotonic() < deadline, f"{rule} decided only {done} of {decisions}"
        spoof(lab, str(first), FLOOD_ROUND)
        first += FLOOD_ROUND
    time.sleep(1.0)  # the last SYNs of the last round are decided by now, or dropped
    return hits(status(lab, daemon), rule)


def lifecycle(daemon: LabDaemon, action: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The daemon's lifecycle events named `action`, waiting for the first one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in daemon.events() if e.get("event", {}).get("action") == action]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {action} event within {timeout} s")


def test_six_addresses_of_one_64_share_one_bucket(
    lab: Lab, tmp_path: Path, extra_addresses: list[str]
) -> None:
    """Privacy addresses: a bot rotating through its /64 gets burst 2, not 2 per address."""
    rotated = [f"2001:db8:64:10::a{i}" for i in range(1, 7)]
    for address in rotated:
        add_address(lab, extra_addresses, address)
    daemon = started(lab, tmp_path, SIX_OF_ONE_64)
    try:
        outcomes = [connect(lab, a.MX.v6, source) for source in rotated]
        assert outcomes == ["connected"] * 2 + ["refused"] * 4, outcomes
        limited = [
            e["portguard"]["limit"] for e in daemon.events()
            if e.get("event", {}).get("dataset") == "portguard.decision"
        ]  # fmt: skip
        assert [e["key"] for e in limited] == ["2001:db8:64:10::/64"] * 6, limited
    finally:
        assert daemon.stop() == 0


def test_a_spoofed_flood_on_another_rule_does_not_free_a_limited_bot(
    lab: Lab, tmp_path: Path
) -> None:
    """More decided spoofed sources on another limited rule than the old shared table held:
    the bot's depleted bucket stays, and the flooded rule's full table is counted."""
    daemon = started(lab, tmp_path, BOT_AND_FLOOD)
    try:
        assert [connect(lab, a.MX.v4) for _ in range(3)] == ["connected"] * 2 + ["refused"]
        decided = flood_until_decided(lab, daemon, "flood-25", OLD_SHARED_CAPACITY + 1_000)
        assert connect(lab, a.MX.v4) == "refused", "the bot's depleted bucket was evicted"
        doc = status(lab, daemon)
        # every flood source is new: the first MAX_BUCKETS got a bucket, the rest a full table
        assert doc["limit_table_full"] == {"flood-25": decided - MAX_BUCKETS}, doc
        events = lifecycle(daemon, "limit-table-full")
        assert all(e["portguard"]["rule"] == "flood-25" for e in events), events
        assert sum(e["portguard"]["count"] for e in events) <= decided - MAX_BUCKETS
    finally:
        assert daemon.stop() == 0


def test_a_full_table_of_depleted_buckets_refuses_new_sources(
    lab: Lab, tmp_path: Path, extra_addresses: list[str]
) -> None:
    """max_buckets = 4: the bot and three spoofed sources fill the table; every later new
    source, spoofed or honest, gets the exceed action, and the bot stays limited."""
    honest = "100.64.10.11"
    add_address(lab, extra_addresses, honest)
    daemon = started(lab, tmp_path, SMALL_TABLE)
    try:
        assert [connect(lab, a.MX.v4) for _ in range(3)] == ["connected"] * 2 + ["refused"]
        spoof(lab, "100.64.20.1", 50)
        assert connect(lab, a.MX.v4) == "refused"
        assert connect(lab, a.MX.v4, honest) == "refused"
        full = status(lab, daemon)["limit_table_full"]["bot-25"]
        assert 0 < full <= 48, full  # 3 of the 50 spoofed found room; the honest one did not
        events = lifecycle(daemon, "limit-table-full")
        assert events[0]["portguard"]["rule"] == "bot-25"
        assert events[0]["portguard"]["max_buckets"] == 4
    finally:
        assert daemon.stop() == 0
