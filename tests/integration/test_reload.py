"""Reloading under load: long SMTP sessions across the gateway survive 20 reloads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon

ALLOW = '[[rule]]\nid = "relay"\ndst = "198.51.100.26/32"\ndport = [25]\naction = "allow"\n'
EXTRA = '[[rule]]\nid = "extra-{n}"\ndst = "192.0.2.{n}"\ndport = [25]\naction = "drop"\n'
BROKEN = '[[rule]]\nid = "relay"\ndport = [25]\naction = "allow"\nsrc = "no-such-set"\n'


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        built.start_smtp_servers()
        yield built


def reload(config: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "portguard", "reload", "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_50_long_sessions_survive_20_reloads(lab: Lab, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(ALLOW)
    daemon = LabDaemon(lab, rules=[rules])
    daemon.start()
    try:
        argv = lab.python("lab.sessions", "--to", a.SMARTHOST.v4, "--count", "50",
                          "--seconds", "10", "--interval", "0.2")  # fmt: skip
        sessions = lab.popen("sub", argv, stdout=subprocess.PIPE, text=True)
        assert sessions.stdout is not None and sessions.stdout.readline().strip() == "STARTED"
        versions = set()
        for n in range(20):
            if n == 10:
                rules.write_text(BROKEN)
                assert reload(daemon.config).returncode == 1
                continue
            rules.write_text(ALLOW + EXTRA.format(n=n + 1))
            done = reload(daemon.config)
            assert done.returncode == 0, done.stderr
            versions.add(done.stdout)
        out, _ = sessions.communicate(timeout=60)
        report = json.loads(out.strip().splitlines()[-1])
        assert report == {"ok": 50, "failed": []}
        assert len(versions) == 19  # every good reload put a new policy in force
        lifecycle = [e["event"]["action"] for e in daemon.events()
                     if e["event"].get("dataset") == "portguard.lifecycle"]  # fmt: skip
        assert lifecycle.count("reload") == 19 and lifecycle.count("reload-failed") == 1
        assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"
    finally:
        assert daemon.stop() == 0
