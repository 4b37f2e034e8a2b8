"""The deny cache on nftables, on the stock kernel (nft queue statement present): a bot
retrying a denied SYN is answered by the kernel from the generation in force, the rotation
switches generations, and the log's counts add up to the SYNs sent.

One daemon (the shipped rules, the cache rotating every 2 s, per_source off, flood control
on) serves the module. Rates are low: under TCG the whole VM is slow; no figure is asserted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kernel_lab import gw, gw_runner, lifecycle, wait_for

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_leftover
from lab.peers import python_env
from portguard.io.hooks.nftables import NftablesBackend

RATE, SECONDS = 200, 4.0


@pytest.fixture(scope="module")
def daemon(lab: Lab) -> Iterator[LabDaemon]:
    running = LabDaemon(lab, deny_cache=2)
    text = running.config.read_text()
    running.config.write_text(text.replace("[queue]\n", "[queue]\nper_source = false\n", 1))
    running.start(timeout=120)
    try:
        yield running
    finally:
        running.stop()


def flood(lab: Lab, version: int) -> int:
    argv = lab.python("lab.synflood", "--src", a.SUBSCRIBER.family(version), "--dst",
                      a.MX.family(version), "--dport", "25", "--rate", str(RATE),
                      "--seconds", str(SECONDS))  # fmt: skip
    proc = lab.run("sub", argv, capture_output=True, text=True, timeout=300, env=python_env())
    assert proc.returncode == 0, proc.stderr
    sent: int = json.loads(proc.stdout.strip().splitlines()[-1])["sent"]
    return sent


def denies(daemon: LabDaemon, source: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events()
            if e.get("event", {}).get("dataset") == "portguard.decision"
            and e.get("source", {}).get("ip") == source
            and "denied" in e["event"]["type"]]  # fmt: skip


def represented(event: dict[str, Any]) -> int:
    aggregate = (event.get("portguard") or {}).get("aggregate")
    return 1 if aggregate is None else int(aggregate["suppressed"])


def test_the_table_has_both_generations_and_status_is_complete(lab: Lab, daemon: LabDaemon) -> None:
    wait_for("hook-installed", lambda: lifecycle(daemon, "hook-installed"))
    table = gw(lab, "nft", "-t", "list", "table", "inet", "portguard")
    assert "chain cache_a" in table and "chain cache_b" in table
    status = NftablesBackend(gw_runner(lab)).status()
    assert status.complete, status.detail


def test_a_retrying_bot_is_answered_by_the_kernel_and_counted(lab: Lab, daemon: LabDaemon) -> None:
    sent = {version: flood(lab, version) for version in (4, 6)}
    time.sleep(5.0)  # two rotations: the counts are read back
    cached = gw(lab, "nft", "list", "counter", "inet", "portguard", "deny_cache_answered")
    assert "packets 0 " not in cached, cached
    queue = lab.queue_stats() or {}
    assert int(queue.get("queue_dropped", 0)) + int(queue.get("user_dropped", 0)) == 0
    for version, count in sent.items():
        made = [e for e in denies(daemon, a.SUBSCRIBER.family(version))
                if "aggregate" not in e["portguard"]]  # fmt: skip
        assert len(made) < count // 2, f"IPv{version}: the daemon decided {len(made)} of {count}"
    daemon.stop()  # flood control's windows (60 s) close: every count is in the log
    for version, count in sent.items():
        logged = denies(daemon, a.SUBSCRIBER.family(version))
        assert sum(represented(e) for e in logged) == count, f"IPv{version}"


def test_sigterm_left_nothing(lab: Lab, daemon: LabDaemon) -> None:
    daemon.stop()
    assert not hooks_leftover(lab)
