"""`reevaluate = true`: after a reload, allowed connections the new policy denies are ended."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon

RELAY = '[[rule]]\nid = "relay"\ndst = ["198.51.100.26", "2001:db8:25::26"]\ndport = [25]\n'
DIRECT = '[[rule]]\nid = "{id}"\ndst = ["198.51.100.25", "2001:db8:25::25"]\ndport = [25]\n'
BOTH = RELAY + 'action = "allow"\n' + DIRECT.format(id="direct") + 'action = "allow"\n'
ONLY_RELAY = (
    RELAY + 'action = "allow"\n' + DIRECT.format(id="direct-closed") + 'action = "reject"\n'
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        built.start_smtp_servers()
        yield built


def sessions(lab: Lab, to: str) -> subprocess.Popen[str]:
    """Three SMTP sessions sending NOOP every 100 ms for 8 s (started when this returns)."""
    argv = lab.python("lab.sessions", "--to", to, "--count", "3", "--seconds", "8",
                      "--interval", "0.1")  # fmt: skip
    proc = lab.popen("sub", argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "STARTED"
    return proc


def report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=60)
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_a_denied_session_ends_within_a_second_others_survive(
    lab: Lab, tmp_path: Path, version: int
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(BOTH)
    daemon = LabDaemon(lab, rules=[rules], reevaluate=True)
    daemon.start()
    try:
        kept = sessions(lab, a.SMARTHOST.family(version))
        doomed = sessions(lab, a.MX.family(version))
        started = time.monotonic()
        time.sleep(1)
        rules.write_text(ONLY_RELAY)
        argv = [sys.executable, "-m", "portguard", "reload", "--config", str(daemon.config)]
        assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
        reloaded = time.monotonic() - started  # seconds since the sessions started
        ended = report(doomed)
        assert ended["ok"] == 0 and len(ended["failed"]) == 3, ended
        for failure in ended["failed"]:
            assert "reset" in failure["error"].lower(), failure
            assert failure["after_s"] - reloaded < 1.0, (failure, reloaded)  # within a second
        assert report(kept) == {"ok": 3, "failed": []}
        events = [e for e in daemon.events() if "end" in e["event"].get("type", [])]
        assert len(events) == 3
        assert {e["rule"]["id"] for e in events} == {"direct-closed"}
        assert all(e["destination"]["ip"] == a.MX.family(version) for e in events)
        assert all(e["network"]["direction"] == "outbound" for e in events)
    finally:
        assert daemon.stop() == 0


def test_without_reevaluate_established_sessions_are_untouched(lab: Lab, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(BOTH)
    daemon = LabDaemon(lab, rules=[rules])
    daemon.start()
    try:
        survivor = sessions(lab, a.MX.v4)
        time.sleep(1)
        rules.write_text(ONLY_RELAY)
        argv = [sys.executable, "-m", "portguard", "reload", "--config", str(daemon.config)]
        assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
        assert report(survivor) == {"ok": 3, "failed": []}
        assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome == "refused"  # new ones are
    finally:
        assert daemon.stop() == 0
