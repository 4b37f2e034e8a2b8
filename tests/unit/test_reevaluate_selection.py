"""Which allowed connections a new policy ends (the pure part of `reevaluate`)."""

from __future__ import annotations

from pathlib import Path

from portguard.core.policy.model import Direction
from portguard.io.conntrack import TrackedConnection
from portguard.io.policyfiles import load_ruleset
from portguard.service.reevaluate import denied

RULES = """
[[rule]]
id = "relay"
dst = "198.51.100.26"
dport = [25]
action = "allow"

[[rule]]
id = "inbound-ok"
direction = "inbound"
action = "allow"

[[rule]]
id = "direct-closed"
dport = [25]
action = "drop"
"""


def tracked(dst: int, direction: Direction = Direction.OUTBOUND) -> TrackedConnection:
    return TrackedConnection(4, 0x64400A0A, dst, 4000, 25, direction, 0x05000000, 7)


def test_only_connections_the_policy_now_denies(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    ruleset = load_ruleset([path])
    mx, relay = tracked(0xC6336419), tracked(0xC633641A)
    inbound = tracked(0xC6336419, Direction.INBOUND)  # the direction the connmark recorded
    chosen = denied(ruleset, [mx, relay, inbound])
    assert [(c, d.rule_id, d.action.value) for c, d in chosen] == [(mx, "direct-closed", "drop")]


def test_a_port_forward_is_judged_by_its_real_destination(tmp_path: Path) -> None:
    """DNAT to the relay: allowed; the same public address forwarded to an MX: denied."""
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    ruleset = load_ruleset([path])
    public = 0xCB007150  # 203.0.113.80: the address the client dialled
    to_relay = TrackedConnection(4, 0x64400A0A, 0xC633641A, 4000, 25, Direction.OUTBOUND,
                                 0x05000000, 7, orig_dst=public, orig_dport=2525)  # fmt: skip
    to_mx = TrackedConnection(4, 0x64400A0A, 0xC6336419, 4001, 25, Direction.OUTBOUND,
                              0x05000000, 8, orig_dst=public, orig_dport=2525)  # fmt: skip
    assert [conn for conn, _ in denied(ruleset, [to_relay, to_mx])] == [to_mx]
