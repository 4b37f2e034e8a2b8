"""Attacks on the control plane: idle clients, file-descriptor exhaustion, slow reloads, and a
start during a DNS outage. Every test runs the real daemon in the lab's gateway namespace."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_installed
from portguard.service.control import request as control_request

LIVENESS = 5.0  # seconds: an answer within this is "answers" (liveness, not speed)
RESOLVER = Path(__file__).with_name("fake_resolver.py")
HOST = "relay.isp.test"
HOST_RULES = f"""
[sets.relays]
hosts = ["{HOST}"]

[[rule]]
id = "relay"
dst = "relays"
dport = [25]
action = "allow"

[[rule]]
id = "block-25"
dport = [25]
action = "reject"
"""


def socket_path(daemon: LabDaemon) -> Path:
    return daemon.dir / "control.sock"


def status(daemon: LabDaemon, timeout: float = LIVENESS) -> dict[str, Any]:
    return control_request(socket_path(daemon), "status", timeout=timeout)


@contextlib.contextmanager
def idle_clients(path: Path, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to the control socket that never send a request."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                sock.connect(str(path))  # a full backlog: the attacker just keeps trying
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def lifecycle(daemon: LabDaemon, action: str, count: int = 1) -> list[dict[str, Any]]:
    """The lifecycle events `action` written so far, waiting up to 10 s for `count` of them
    (the log process writes them a moment after the fact)."""
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in daemon.events() if e["event"]["action"] == action
                 and e["event"].get("dataset") == "portguard.lifecycle"]  # fmt: skip
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_64_idle_clients_do_not_lock_status_out(lab: Lab, workers: int) -> None:
    daemon = LabDaemon(lab, workers=workers)
    daemon.start()
    try:
        with idle_clients(socket_path(daemon), 64) as held:
            started = time.monotonic()
            answer = status(daemon)
            assert answer["ok"], answer
            assert time.monotonic() - started < LIVENESS
            # the idle ones are closed by the daemon (timeout or eviction): each reads EOF
            deadline = time.monotonic() + 20
            for sock in held:
                sock.setblocking(True)
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1) == b""
        counters = status(daemon)["control"]
        assert counters["evicted"] + counters["idle_closed"] >= 16, counters
    finally:
        assert daemon.stop() == 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_descriptor_exhaustion_keeps_the_daemon_deciding(lab: Lab) -> None:
    daemon = LabDaemon(lab)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    original = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 3, original[1]))
        with idle_clients(socket_path(daemon), 40):
            time.sleep(1.0)  # the daemon's accept meets EMFILE meanwhile
            assert daemon.proc.poll() is None, daemon.stderr_tail(120)
            assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"
            assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome != "delivered"
        resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
        deadline = time.monotonic() + 10
        answer: dict[str, Any] = {}
        while time.monotonic() < deadline and not answer.get("ok"):
            with contextlib.suppress(OSError):
                answer = status(daemon)
        assert answer.get("ok"), answer
        assert len(lifecycle(daemon, "control-accept-error")) == 1  # logged once, not per try
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, original)
        assert daemon.stop() == 0


def resolver_daemon(lab: Lab, tmp_path: Path, workers: int, rules: Path) -> LabDaemon:
    (tmp_path / "hosts.json").write_text(json.dumps({HOST: [a.SMARTHOST.v4]}))
    command = [sys.executable, str(RESOLVER), str(tmp_path)]
    return LabDaemon(lab, rules=[rules], workers=workers, command=command)


def resolutions(tmp_path: Path) -> list[str]:
    calls = tmp_path / "calls.log"
    return calls.read_text().splitlines() if calls.exists() else []


def test_forked_reload_with_slow_dns_keeps_the_supervisor_answering(
    lab: Lab, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(HOST_RULES)
    daemon = resolver_daemon(lab, tmp_path, 2, rules)
    daemon.start()
    try:
        rules.write_text(HOST_RULES.replace('"block-25"', '"block-25-new"'))
        before = len(resolutions(tmp_path))
        (tmp_path / "hold").touch()  # the resolver now answers only when the test says so
        answers: list[dict[str, Any]] = []
        reload = threading.Thread(
            target=lambda: answers.append(control_request(socket_path(daemon), "reload", 60))
        )
        reload.start()
        time.sleep(0.5)
        assert status(daemon)["ok"]  # the supervisor answers while the reload resolves
        assert not answers  # the reply waits for the workers
        (tmp_path / "hold").unlink()
        reload.join(60)
        assert answers and answers[0]["ok"], answers
        version = answers[0]["policy_version"]
        workers = answers[0]["workers"]
        assert len(workers) == 2 and {w["policy_version"] for w in workers} == {version}
        assert len(resolutions(tmp_path)) - before == 1  # built once, not once per process
        assert len(lifecycle(daemon, "reload", 2)) == 2  # each worker swapped it in
        assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"
    finally:
        with contextlib.suppress(FileNotFoundError):
            (tmp_path / "hold").unlink()
        assert daemon.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_start_during_a_dns_outage_uses_the_last_good_policy(
    lab: Lab, tmp_path: Path, workers: int
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(HOST_RULES)
    first = resolver_daemon(lab, tmp_path, workers, rules)
    first.start()
    assert first.stop() == 0
    (tmp_path / "down").touch()  # the resolver fails from now on
    second = resolver_daemon(lab, tmp_path, workers, rules)
    shutil.copytree(first.dir / "state", second.dir / "state")  # the same state directory
    second.start()
    try:
        assert hooks_installed(lab)
        events = lifecycle(second, "resolve-fallback")
        assert events and HOST in json.dumps(events[0])
        assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"
        assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome != "delivered"
    finally:
        assert second.stop() == 0
