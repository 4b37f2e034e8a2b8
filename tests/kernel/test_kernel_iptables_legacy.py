"""The iptables backend through iptables-legacy (x_tables, no nftables at all) on the stock kernel.

The daemon gets a PATH whose `iptables*`/`ip6tables*` are iptables-legacy's, as on a machine
where `update-alternatives` chose legacy. Its own lab: legacy tables, once loaded in a namespace,
stay there (empty) and would make later iptables-nft listings there warn.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_lab import gw, legacy_rules, lifecycle, queued, send, wait_for

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon

LEGACY = Path("/usr/sbin/xtables-legacy-multi")
TOOLS = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
         "ip6tables-restore")  # fmt: skip
BULK = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        built.start_smtp_servers(timeout=120)
        yield built


def legacy_path(lab: Lab) -> str:
    """A directory whose iptables tools are iptables-legacy's, first on a copy of PATH."""
    bindir = Path(tempfile.mkdtemp(dir=lab.workdir))
    for tool in TOOLS:
        (bindir / tool).symlink_to(LEGACY)  # xtables-legacy-multi dispatches on its argv[0]
    return f"PATH={bindir}:{os.environ['PATH']}"


def test_the_iptables_backend_on_iptables_legacy(lab: Lab) -> None:
    if not LEGACY.exists():
        pytest.fail(f"{LEGACY} is missing: apt-get install iptables")
    command = ["env", legacy_path(lab), sys.executable, "-m", "portguard"]
    daemon = LabDaemon(lab, command=command)
    daemon.config.write_text(
        daemon.config.read_text().replace('backend = "auto"', 'backend = "iptables"')
    )
    try:
        daemon.start(timeout=120)
        installed = wait_for("hook-installed", lambda: lifecycle(daemon, "hook-installed"))
        assert installed and installed[-1]["portguard"]["backend"] == "iptables", installed
        assert legacy_rules(lab).count("NFQUEUE") >= 2  # IPv4 and IPv6
        assert gw(lab, "nft", "list", "ruleset").strip() == ""  # nothing through nftables
        for version in (4, 6):
            assert send(lab, "sub", a.MX.family(version), 25, timeout=4).outcome == "refused"
            assert send(lab, "sub", a.SMARTHOST.family(version), 25).outcome == "delivered"
        before = queued(lab)
        assert send(lab, "biz", a.MX.v4, 25, size=BULK, timeout=120).outcome == "delivered"
        assert queued(lab) - before == 1  # the connmark fast path in x_tables
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr_tail()
    assert lifecycle(daemon, "hook-removed")
    left = legacy_rules(lab)
    assert "NFQUEUE" not in left and "portguard" not in left.lower(), left
