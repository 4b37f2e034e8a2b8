"""`portguard replay` of a tcpdump capture gives the decisions the live daemon gave.

The real daemon runs in the lab's gateway with the shipped rules; tcpdump captures on every
interface of the gateway (`-i any`: Linux cooked capture, each forwarded SYN seen arriving and
again leaving) while real clients make allowed and denied connections, IPv4 and IPv6, both
ways. Replaying the capture with the daemon's own config must give, connection by connection,
the rule and verdict the daemon logged.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon
from lab.peers import python_env

# the address space behind the lab's gateway: the subscribers' and the business network
INSIDE = ("100.64.10.0/24", "2001:db8:64:10::/64", "203.0.113.0/24", "2001:db8:b12::/48")
Connection = tuple[str, int, str, int]  # source, source port, destination, destination port

pytestmark = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")


def start_capture(lab: Lab, path: Path) -> subprocess.Popen[bytes]:
    """tcpdump on every interface of the gateway, written packet by packet, once listening."""
    # --immediate-mode: each packet to the file at once (not in blocks a SIGINT would lose)
    argv = ["tcpdump", "-i", "any", "--immediate-mode", "-U", "-n", "-Z", "root", "-w", str(path),
            "tcp"]  # fmt: skip
    proc = lab.popen("gw", argv, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    said = []
    for _ in range(5):  # "tcpdump: data link type LINUX_SLL2", "listening on any, ..."
        said.append(proc.stderr.readline().decode())
        if "listening on" in said[-1]:
            return proc
    raise AssertionError(f"tcpdump did not start: {said}")


def stop_capture(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)


def traffic(lab: Lab) -> list[tuple[str, str]]:
    """Allowed and denied connections by real clients; the outcomes they saw."""
    seen = []
    for version in (4, 6):
        for role, server, port in [
            ("sub", a.MX, 25),  # block-25: reject
            ("sub", a.MX, 25),
            ("sub", a.SMARTHOST, 25),  # smarthost: allow
            ("sub", a.SUBMISSION, 587),  # submission: allow
            ("biz", a.MX, 25),  # business-25: allow
            ("net", a.SUBSCRIBER, 25),  # inbound-25-subscribers: reject
        ]:
            result = lab.send_mail(role, server.family(version), port, timeout=3)
            seen.append((f"{role}->{server.family(version)}:{port}", result.outcome))
    return seen


def logged_decisions(daemon: LabDaemon) -> dict[Connection, tuple[str, str]]:
    return decisions_of(daemon.events())


def decisions_of(events: list[dict[str, Any]]) -> dict[Connection, tuple[str, str]]:
    found = {}
    for event in events:
        if event.get("event", {}).get("dataset") != "portguard.decision":
            continue
        source, destination = event["source"], event["destination"]
        key = (source["ip"], source["port"], destination["ip"], destination["port"])
        assert key not in found, f"two decisions for {key}"
        found[key] = (event["rule"]["id"], event["event"]["action"])
    return found


def replay(config: Path, capture: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    inside = [arg for cidr in INSIDE for arg in ("--inside", cidr)]
    argv = [sys.executable, "-m", "portguard", "replay", "--config", str(config), *inside,
            *extra, str(capture)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=python_env())


def test_replay_of_a_tcpdump_capture_gives_the_daemons_decisions(
    lab: Lab, every_deny_daemon: LabDaemon
) -> None:
    capture = every_deny_daemon.dir / "gateway.pcap"
    tcpdump = start_capture(lab, capture)
    try:
        seen = traffic(lab)
    finally:
        time.sleep(0.5)  # the last packets reach tcpdump's file
        stop_capture(tcpdump)
    outcomes = {outcome for _, outcome in seen}
    assert {"delivered", "refused"} <= outcomes, seen
    deadline = time.monotonic() + 5
    while len(logged_decisions(every_deny_daemon)) < len(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    live = logged_decisions(every_deny_daemon)
    assert len(live) == len(seen), (live, seen)  # one decision per connection, each logged

    result = replay(every_deny_daemon.config, capture, "--format", "json")
    assert result.returncode == 0, result.stderr
    replayed = decisions_of([json.loads(line) for line in result.stdout.splitlines()])
    assert replayed == live
    rules = {rule for rule, _ in live.values()}
    assert rules == {"block-25", "smarthost", "submission", "business-25",
                     "inbound-25-subscribers"}  # fmt: skip

    same = replay(every_deny_daemon.config, capture, "--compare", str(every_deny_daemon.config))
    assert (same.returncode, same.stderr) == (0, ""), same.stdout
