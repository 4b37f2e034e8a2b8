"""A spambot fanning out on port 25, caught and quarantined by the real daemon in the lab.

The subscriber tries port 25 on more distinct servers than `[detect.fanout]` allows (the
shipped rules reject each attempt); the daemon raises one alert and quarantines it: its mail
to the smarthost, allowed before, is then refused by `quarantine:fanout`, still after a
restart, until `portguard quarantine release` lifts it or the quarantine expires.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import SHIPPED_RULES, LabDaemon
from lab.demobot import BOT, detector  # the demo's bot (a loop of connects) and table
from lab.peers import python_env

DISTINCT = 5  # the detector's threshold
TARGETS = [f"198.51.100.{100 + n}" for n in range(DISTINCT + 3)]  # routed to `net`
LIVENESS = 10.0  # seconds: a bound for an event to appear, not a speed claim


def rules_with(lab: Lab, extra: str) -> Path:
    """The shipped rules plus a file with `extra`."""
    folder = Path(tempfile.mkdtemp(prefix="rules-", dir=lab.workdir)) / "rules"
    shutil.copytree(SHIPPED_RULES, folder)
    (folder / "20-detect.toml").write_text(extra)
    return folder


@pytest.fixture
def started(lab: Lab, request: pytest.FixtureRequest) -> Iterator[LabDaemon]:
    daemon = LabDaemon(lab, rules=[rules_with(lab, detector(DISTINCT, request.param))])
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def fan_out(lab: Lab) -> None:
    argv = [sys.executable, "-c", BOT, a.SUBSCRIBER.v4, *TARGETS]
    lab.run("sub", argv, check=True, timeout=60, env=python_env())


def wait_for(found: Callable[[], list[Any]], timeout: float = LIVENESS) -> list[Any]:
    deadline = time.monotonic() + timeout
    while not (result := found()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def alerts(daemon: LabDaemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e["event"].get("kind") == "alert"]


def refusals(daemon: LabDaemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("rule", {}).get("id") == "quarantine:fanout"
            and e["event"].get("dataset") == "portguard.decision"]  # fmt: skip


def actions(daemon: LabDaemon, action: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e["event"].get("action") == action]


def smarthost(lab: Lab) -> str:
    return lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome


def cli(lab: Lab, daemon: LabDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    argv = lab.python("portguard", "quarantine", *args, "--config", str(daemon.config))
    return lab.run("gw", argv, capture_output=True, text=True, timeout=30, env=python_env())


@pytest.mark.parametrize("started", ["1h"], indirect=True)
def test_a_fanning_out_bot_is_alerted_quarantined_kept_over_a_restart_and_released(
    lab: Lab, started: LabDaemon
) -> None:
    assert smarthost(lab) == "delivered"
    fan_out(lab)
    found = wait_for(lambda: alerts(started))
    assert len(found) == 1, found
    alert = found[0]
    assert alert["event"]["action"] == "fanout-detected"
    assert alert["rule"]["id"] == "fanout"
    assert alert["source"]["ip"] == a.SUBSCRIBER.v4
    assert alert["portguard"]["detection"]["distinct"] == DISTINCT
    assert set(alert["portguard"]["detection"]["samples"]) <= set(TARGETS)
    assert wait_for(lambda: actions(started, "quarantine-added"))

    assert smarthost(lab) != "delivered"
    refused = wait_for(lambda: refusals(started))
    assert refused and refused[0]["source"]["ip"] == a.SUBSCRIBER.v4
    assert refused[0]["event"]["action"] == "reject"

    started.restart()
    before = len(refusals(started))
    assert smarthost(lab) != "delivered", "the quarantine must survive a restart"
    assert wait_for(lambda: refusals(started)[before:])

    listed = cli(lab, started, "list")
    assert listed.returncode == 0 and a.SUBSCRIBER.v4 in listed.stdout, listed
    released = cli(lab, started, "release", a.SUBSCRIBER.v4)
    assert released.returncode == 0, released
    assert wait_for(lambda: actions(started, "quarantine-released"))
    assert smarthost(lab) == "delivered"
    assert len(alerts(started)) == 1, "one alert per crossing"


@pytest.mark.parametrize("started", ["5s"], indirect=True)
def test_a_short_quarantine_expires_on_time(lab: Lab, started: LabDaemon) -> None:
    fan_out(lab)
    assert wait_for(lambda: actions(started, "quarantine-added"))
    assert smarthost(lab) != "delivered"
    assert wait_for(lambda: actions(started, "quarantine-expired"), timeout=5 + LIVENESS)
    assert smarthost(lab) == "delivered"


@pytest.mark.parametrize("started", ["1h"], indirect=True)
def test_a_quarantine_added_by_hand_refuses_and_is_logged(lab: Lab, started: LabDaemon) -> None:
    added = cli(lab, started, "add", a.SUBSCRIBER.v4, "--for", "1h", "--ports", "25")
    assert added.returncode == 0, added
    assert wait_for(lambda: actions(started, "quarantine-added"))
    assert smarthost(lab) != "delivered"
    assert cli(lab, started, "release", a.SUBSCRIBER.v4).returncode == 0
    assert smarthost(lab) == "delivered"


def test_with_two_workers_a_quarantine_reaches_both_and_the_cli_speaks_to_all(
    lab: Lab,
) -> None:
    """Each worker counts its share (ceil(5 / 2) = 3 destinations); a quarantine added by
    hand goes to every worker through the supervisor; `list` merges their tables."""
    daemon = LabDaemon(lab, rules=[rules_with(lab, detector(DISTINCT, "1h"))], workers=2)
    daemon.start()
    try:
        fan_out(lab)
        assert wait_for(lambda: alerts(daemon)), "at least one worker saw 3 destinations"
        assert wait_for(lambda: actions(daemon, "quarantine-added"))
        # the other worker reads the quarantine within about a second (its housekeeping)
        assert wait_for(lambda: [1] if smarthost(lab) != "delivered" else [])
        assert cli(lab, daemon, "release", a.SUBSCRIBER.v4).returncode == 0
        assert smarthost(lab) == "delivered"
        assert cli(lab, daemon, "add", a.SUBSCRIBER.v4, "--for", "1h").returncode == 0
        listed = cli(lab, daemon, "list", "--json")
        assert listed.returncode == 0 and a.SUBSCRIBER.v4 in listed.stdout, listed
        assert smarthost(lab) != "delivered"
    finally:
        daemon.stop()
