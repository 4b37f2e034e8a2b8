"""The packet loop's fast path in the real daemon, on the real kernel queue (iptables backend).

A subscriber opens connections to the ISP smarthost, each from a new source port (allowed by
the shipped rules): after the gate's first allow, the fast path answers the others in C. Every
SYN is still accounted for (decided, or lost in the queue), every decision has exactly one
event with its own flow id, the hit counts are the decisions, and `status` counts what the
fast path answered; with `[queue] fast_path = false` the gate decides each one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon
from tests.integration.test_attack_limits import hits, status
from tests.integration.test_attack_retries import configured, flood, queue_losses, stopped

RATE, SECONDS = 2_000, 3.0


def decisions(daemon: LabDaemon, rule: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events()
            if e.get("event", {}).get("dataset") == "portguard.decision"
            and e.get("rule", {}).get("id") == rule]  # fmt: skip


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path-on", "fast_path-off"])
def test_allowed_syns_are_answered_in_c_and_each_logged_once(
    lab: Lab, tmp_path: Path, fast: bool
) -> None:
    daemon = configured(LabDaemon(lab), f"per_source = false\nfast_path = {str(fast).lower()}")
    daemon.start()
    try:
        sent = flood(lab, a.SMARTHOST.v4, rate=RATE, seconds=SECONDS)
        deadline = time.monotonic() + 30
        while True:  # the events reach the file within a moment of the verdicts
            doc = status(lab, daemon)
            decided, logged = hits(doc, "smarthost"), decisions(daemon, "smarthost")
            if decided + queue_losses(lab) >= sent and len(logged) >= decided:
                break
            assert time.monotonic() < deadline, (sent, decided, len(logged))
            time.sleep(0.5)
    finally:
        stopped(lab, daemon)
    assert decided + queue_losses(lab) == sent and decided > 0
    assert len(logged) == decided
    assert len({e["portguard"]["flow_id"] for e in logged}) == decided
    assert {e["event"]["action"] for e in logged} == {"allow"}
    assert {e["source"]["ip"] for e in logged} == {a.SUBSCRIBER.v4}
    assert len({e["source"]["port"] for e in logged}) == decided
    answered = doc["workers"][0]["fast_path"]
    if fast:
        assert 0 < answered["answered"] < decided  # the first (at least) was the gate's
    else:
        assert answered is None
