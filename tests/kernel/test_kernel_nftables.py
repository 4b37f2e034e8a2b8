"""The nftables backend on the stock kernel: `auto`, the shipped policy, the fast path, repair.

One daemon (the shipped ISP rules, plus one `drop` rule in front) serves the whole module: under
TCG a start costs about ten seconds. The tests run in file order; the last one stops the daemon
and checks that SIGTERM leaves nothing behind.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_lab import (
    decision,
    gw,
    gw_runner,
    lifecycle,
    portguard_table,
    queued,
    send,
    wait_for,
)

from lab import Lab
from lab import addresses as a
from lab.daemon import SHIPPED_RULES, LabDaemon, hooks_leftover
from portguard.io.hooks.factory import select_backend
from portguard.io.hooks.nftables import NftablesBackend

VERSIONS = pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
DROP_RULE = f"""[[rule]]
id = "drop-25-to-submission"
description = "port 25 to the submission server is dropped (no RST)"
dst = ["{a.SUBMISSION.v4}", "{a.SUBMISSION.v6}"]
dport = 25
action = "drop"
"""
OTHER_TABLE = """table inet pgtest_other {
\tchain early {
\t\ttype filter hook forward priority -10; policy accept;
\t\ttcp dport 25 counter accept
\t}
}
"""
BULK = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def daemon(lab: Lab) -> Iterator[LabDaemon]:
    rules = Path(tempfile.mkdtemp(dir=lab.workdir)) / "05-drop.toml"
    rules.write_text(DROP_RULE)
    running = LabDaemon(lab, rules=[rules, SHIPPED_RULES])
    running.start(timeout=120)
    try:
        yield running
    finally:
        running.stop()


def test_auto_picks_nftables(lab: Lab, daemon: LabDaemon) -> None:
    assert select_backend("auto", gw_runner(lab)).name == "nftables"
    installed = wait_for("hook-installed", lambda: lifecycle(daemon, "hook-installed"))
    assert installed and installed[-1]["portguard"]["backend"] == "nftables", installed
    assert "table inet portguard" in portguard_table(lab)
    assert "NFQUEUE" not in gw(lab, "iptables-save") + gw(lab, "ip6tables-save")
    status = NftablesBackend(gw_runner(lab)).status()
    assert status.installed and status.complete and status.rule_sets == 1, status


@VERSIONS
def test_the_shipped_policy(lab: Lab, daemon: LabDaemon, version: int) -> None:
    sub, biz, net = a.SUBSCRIBER.family(version), a.BUSINESS.family(version), a.INTERNET
    mx, relay, submission = (s.family(version) for s in (a.MX, a.SMARTHOST, a.SUBMISSION))
    expected = [  # (client, server, port, mode, outcome, rule, action)
        ("sub", mx, 25, "plain", "refused", "block-25", "reject"),
        ("sub", relay, 25, "plain", "delivered", "smarthost", "allow"),
        ("sub", mx, 587, "starttls", "delivered", "submission", "allow"),
        ("sub", mx, 465, "implicit", "delivered", "submission", "allow"),
        ("biz", mx, 25, "plain", "delivered", "business-25", "allow"),
        ("biz", submission, 25, "plain", "timeout", "drop-25-to-submission", "drop"),
        ("net", sub, 25, "plain", "refused", "inbound-25-subscribers", "reject"),
    ]
    sources = {"sub": sub, "biz": biz, "net": net.family(version)}
    for client, server, port, mode, outcome, rule, action in expected:
        result = send(lab, client, server, port, mode=mode, timeout=4)
        assert result.outcome == outcome, (client, server, port, result)
        event = decision(daemon, sources[client], server, port)
        assert (event["rule"]["id"], event["event"]["action"]) == (rule, action), event
    inbound = decision(daemon, sources["net"], sub, 25)
    assert inbound["network"]["direction"] == "inbound"


def test_unhooked_ports_never_reach_the_queue(lab: Lab, daemon: LabDaemon) -> None:
    before = queued(lab)
    for version in (4, 6):
        assert send(lab, "sub", a.MX.family(version), 2525).outcome == "delivered"
    assert queued(lab) == before
    assert send(lab, "sub", a.SMARTHOST.v6, 25).outcome == "delivered"
    assert queued(lab) == before + 1  # the counter does move for a hooked port


@VERSIONS
def test_an_allowed_bulk_transfer_queues_only_its_syn(
    lab: Lab, daemon: LabDaemon, version: int
) -> None:
    """The connmark fast path: the kernel's queue counter moves by one for a 20 MB message."""
    before = queued(lab)
    result = send(lab, "biz", a.MX.family(version), 25, size=BULK, timeout=120)
    assert result.outcome == "delivered", result
    assert queued(lab) - before == 1
    assert any(r["size"] >= BULK for r in lab.received(a.MX.family(version)))


def test_another_tables_accept_in_front_does_not_bypass_the_hook(
    lab: Lab, daemon: LabDaemon
) -> None:
    """In nftables an `accept` ends only its own base chain: a chain of another table that
    runs earlier on the same hook (priority -10) and accepts port 25 does not skip portguard's.
    (A `drop` there would win: that is the operator's own policy, not a bypass.)"""
    proc = lab.run("gw", ["nft", "-f", "-"], input=OTHER_TABLE, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    try:
        repaired = len(lifecycle(daemon, "hook-repaired"))
        for version in (4, 6):
            assert send(lab, "sub", a.MX.family(version), 25, timeout=4).outcome == "refused"
        assert "counter packets 0" not in gw(lab, "nft", "list", "table", "inet", "pgtest_other")
        assert len(lifecycle(daemon, "hook-repaired")) == repaired  # nothing to repair
    finally:
        gw(lab, "nft", "delete", "table", "inet", "pgtest_other")


def test_a_rule_inserted_in_front_in_portguards_chain_is_repaired(
    lab: Lab, daemon: LabDaemon
) -> None:
    """`nft insert rule inet portguard forward accept` would let every connection through
    unseen: the daemon finds its chain altered and installs it again."""
    repaired = len(lifecycle(daemon, "hook-repaired"))
    gw(lab, "nft", "insert", "rule", "inet", "portguard", "forward", "accept")
    wait_for("hook-repaired", lambda: len(lifecycle(daemon, "hook-repaired")) > repaired)
    assert "altered" in lifecycle(daemon, "hook-repaired")[-1]["portguard"]["problem"]
    status = NftablesBackend(gw_runner(lab)).status(None)
    assert status.complete and status.rule_sets == 1, status
    assert send(lab, "sub", a.MX.v4, 25, timeout=4).outcome == "refused"


def test_nft_flush_ruleset_is_repaired(lab: Lab, daemon: LabDaemon) -> None:
    repaired = len(lifecycle(daemon, "hook-repaired"))
    gw(lab, "nft", "flush", "ruleset")
    wait_for("hook-repaired", lambda: len(lifecycle(daemon, "hook-repaired")) > repaired)
    assert "missing" in lifecycle(daemon, "hook-repaired")[-1]["portguard"]["problem"]
    assert "table inet portguard" in portguard_table(lab)
    for version in (4, 6):
        assert send(lab, "sub", a.MX.family(version), 25, timeout=4).outcome == "refused"
        assert send(lab, "sub", a.SMARTHOST.family(version), 25).outcome == "delivered"


def test_sigterm_removes_the_table_and_leaves_nothing(lab: Lab, daemon: LabDaemon) -> None:
    assert daemon.stop() == 0, daemon.stderr_tail()
    assert lifecycle(daemon, "hook-removed")
    assert not hooks_leftover(lab)
    assert gw(lab, "nft", "list", "ruleset").strip() == ""
    assert lab.queue_stats() is None
    assert send(lab, "sub", a.MX.v4, 25).outcome == "delivered"  # no hook: nothing decides
