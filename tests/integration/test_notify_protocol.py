"""systemd's notify protocol: the real daemon and a datagram socket standing in for systemd.

The daemon runs in the lab's gateway with $NOTIFY_SOCKET (LabDaemon binds one) and
$WATCHDOG_USEC = 1 s, as systemd starts it for `Type=notify` and `WatchdogSec=1s`: READY=1 once it
decides, WATCHDOG=1 at least every half watchdog time while the packet loop turns, RELOADING=1
(with MONOTONIC_USEC) then READY=1 on SIGHUP, STOPPING=1 on SIGTERM. With forked workers only the
parent speaks, and only while every worker's loop turns.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, forked_children, hooks_leftover

WATCHDOG_USEC = 1_000_000
HALF = WATCHDOG_USEC / 2e6  # seconds: systemd wants a ping at least this often
WORKERS = pytest.mark.parametrize(
    "daemon", [1, 2], indirect=True, ids=["one-worker", "two-workers"]
)
RULES = '[[rule]]\nid = "mx-25"\ndst = "198.51.100.25"\ndport = [25]\naction = "reject"\n'


class Message:
    def __init__(self, at: float, data: bytes) -> None:
        self.at = at
        self.fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())


class NotifiedDaemon(LabDaemon):
    """A LabDaemon that keeps every notify message with its arrival time."""

    def __init__(self, lab: Lab, rules: Path, workers: int) -> None:
        super().__init__(lab, rules=[rules], workers=workers)
        self.messages: list[Message] = []

    def _notified_ready(self) -> bool:  # wait_ready's look at the socket: record, don't drop
        self.listen(0)
        return any("READY" in m.fields for m in self.messages)

    def listen(self, seconds: float) -> list[Message]:
        """What arrives within `seconds` (0: what is there now), timed as it arrives."""
        new: list[Message] = []
        deadline = time.monotonic() + seconds
        while True:
            ready, _, _ = select.select([self._notify], [], [], max(0, deadline - time.monotonic()))
            if ready:
                with contextlib.suppress(BlockingIOError):
                    new.append(Message(time.monotonic(), self._notify.recv(4096)))
            elif time.monotonic() >= deadline:
                break
        self.messages += new
        return new

    def until(self, key: str, seconds: float = 10) -> list[Message]:
        """Listen until a message with `key` arrives (or `seconds` pass): what came."""
        new: list[Message] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not any(key in m.fields for m in new):
            new += self.listen(0.05)
        return new


@pytest.fixture
def watchdog_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))  # LabDaemon passes os.environ on
    monkeypatch.delenv("WATCHDOG_PID", raising=False)


@pytest.fixture
def daemon(
    lab: Lab, tmp_path: Path, watchdog_env: None, request: pytest.FixtureRequest
) -> Iterator[NotifiedDaemon]:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    running = NotifiedDaemon(lab, rules, request.param)
    try:
        running.start()
        yield running
    finally:
        running.stop()
    assert not hooks_leftover(lab)


def pings(messages: list[Message]) -> list[float]:
    return [m.at for m in messages if m.fields.get("WATCHDOG") == "1"]


def largest_gap(start: float, times: list[float], end: float) -> float:
    points = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(points))


@WORKERS
def test_ready_watchdog_reload_stopping(lab: Lab, daemon: NotifiedDaemon, tmp_path: Path) -> None:
    if not any("READY" in m.fields for m in daemon.messages):  # start() may see hooks first
        daemon.until("READY")
    ready = [m for m in daemon.messages if m.fields.get("READY") == "1"]
    assert len(ready) == 1 and ready[0].fields["STATUS"].startswith("deciding on")
    start = time.monotonic()
    during = daemon.listen(2.5)
    assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome == "refused"  # it decides
    during += daemon.listen(0.5)
    assert len(pings(during)) >= 6
    assert largest_gap(start, pings(during), time.monotonic()) <= HALF

    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    reload = [m for m in daemon.until("READY") if "WATCHDOG" not in m.fields]
    assert [next(iter(m.fields)) for m in reload] == ["RELOADING", "READY"]
    sent_at = int(reload[0].fields["MONOTONIC_USEC"]) / 1e6  # CLOCK_MONOTONIC, like ours
    assert 0 <= reload[0].at - sent_at < 1.0
    assert "failed" not in reload[1].fields["STATUS"]

    (tmp_path / "rules.toml").write_text(RULES.replace("[25]", "[99999]"))  # a bad rule file
    daemon.proc.send_signal(signal.SIGHUP)
    refused = daemon.until("READY")
    assert [next(iter(m.fields)) for m in refused if "WATCHDOG" not in m.fields] == [
        "RELOADING", "READY"
    ]  # fmt: skip
    assert "reload failed" in next(m for m in refused if "READY" in m.fields).fields["STATUS"]
    assert len(pings(daemon.listen(1.0))) >= 2  # the old policy stays; the loop goes on

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0, daemon.stderr_tail()
    stopping = daemon.listen(0)
    assert any(m.fields.get("STOPPING") == "1" for m in stopping)


@pytest.mark.parametrize("daemon", [2], indirect=True, ids=["two-workers"])
def test_a_stuck_worker_stops_the_pings(daemon: NotifiedDaemon) -> None:
    assert daemon.proc is not None
    workers = forked_children(daemon.proc.pid)
    assert len(workers) == 2
    assert len(pings(daemon.listen(1.0))) >= 2
    os.kill(workers[1], signal.SIGSTOP)  # its loop stops turning; the parent is fine
    try:
        daemon.listen(2 * HALF)  # the parent notices within two ping intervals
        assert pings(daemon.listen(1.5)) == []  # systemd would now kill and restart it
    finally:
        os.kill(workers[1], signal.SIGCONT)
    assert len(pings(daemon.listen(1.0))) >= 2  # turning again: the pings are back
