"""Flow-end events from the real daemon: an allowed SMTP session through the gateway ends,
conntrack forgets it, and the log has its duration, packets and bytes each way."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lab import addresses as a
from lab.daemon import LabDaemon
from lab.netns import sysctl
from lab.topology import Lab


def by_dataset(daemon: LabDaemon, dataset: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event", {}).get("dataset") == dataset]


def wait_for_flow_ends(lab: Lab, daemon: LabDaemon, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # listing the table makes the kernel drop expired entries now, not at its next sweep
        lab.run("gw", ["conntrack", "-L"], capture_output=True, timeout=10)
        found = by_dataset(daemon, "portguard.flow")
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(
        f"fewer than {count} flow-end events: {by_dataset(daemon, 'portguard.flow')}"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_an_allowed_session_ends_with_a_flow_end_event(lab: Lab, workers: int) -> None:
    # TIME_WAIT of 1 s instead of 120 s, so the test need not wait two minutes
    sysctl(lab.ns("gw"), {"net.netfilter.nf_conntrack_tcp_timeout_time_wait": "1",
                          "net.netfilter.nf_conntrack_tcp_timeout_close": "1"})  # fmt: skip
    daemon = LabDaemon(lab, workers=workers)
    daemon.start()
    try:
        sent = lab.send_mail("sub", a.SMARTHOST.v4, 25, timeout=10)
        assert sent.outcome == "delivered", sent
        assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome == "refused"
        (flow,) = wait_for_flow_ends(lab, daemon, 1)
    finally:
        assert daemon.stop() == 0
    decision = [e for e in by_dataset(daemon, "portguard.decision")
                if e["destination"]["ip"] == a.SMARTHOST.v4][-1]  # fmt: skip
    assert flow["event"]["action"] == "flow-end" and flow["event"]["type"] == ["connection", "end"]
    assert flow["source"]["ip"] == a.SUBSCRIBER.v4 and flow["destination"]["port"] == 25
    assert flow["source"]["port"] == decision["source"]["port"]
    assert flow["network"]["community_id"] == decision["network"]["community_id"]
    assert flow["network"]["direction"] == "outbound"
    assert flow["source"]["bytes"] > 200 and flow["destination"]["bytes"] > 200  # SMTP both ways
    assert flow["source"]["packets"] >= 5 and flow["destination"]["packets"] >= 5
    assert flow["network"]["bytes"] == flow["source"]["bytes"] + flow["destination"]["bytes"]
    assert 0 < flow["event"]["duration"] < 60 * 10**9
    assert flow["log"]["level"] == "info"
