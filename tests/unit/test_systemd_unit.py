"""systemd/portguard.service: its exposure score, `systemd-analyze verify`, and the settings
the daemon's code relies on (notify protocol, watchdog, one capability, its directories).

`systemd-analyze` works on unit files without a running systemd; the tests that run it are
skipped where it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import portguard
from portguard.cli import main as cli
from portguard.config.schema import DEFAULT_CONTROL_SOCKET, DEFAULT_RULES_PATH, DEFAULT_STATE_DIR
from portguard.io import queuestats

UNIT = Path(portguard.__file__).resolve().parents[1] / "systemd" / "portguard.service"
MAX_EXPOSURE = 1.5
BINARY = "/usr/bin/portguard"  # the packages link it to the venv (packaging/debian/*.links)
analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def settings(section: str, text: str | None = None) -> dict[str, list[str]]:
    """One section of the unit: each key with all its values, in order."""
    found: dict[str, list[str]] = {}
    current = ""
    for raw in (UNIT.read_text() if text is None else text).splitlines():
        line = raw.strip()
        if line.startswith("["):
            current = line
        elif current == f"[{section}]" and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def words(values: list[str]) -> list[str]:
    return " ".join(values).split()


def one(section: dict[str, list[str]], key: str) -> str:
    assert len(section.get(key, [])) == 1, f"{key}: {section.get(key)}"
    return section[key][0]


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "": 1}
    match = re.fullmatch(r"(\d+)\s*(ms|s|min|)", value)
    assert match, value
    return int(match[1]) * units[match[2]]


def analyze_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)  # fmt: skip


@analyze
def test_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    result = analyze_run("security", "--offline=true", "--threshold=15", str(UNIT), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr  # exposure <= 15 / 100
    score = re.search(r"Overall exposure level for portguard\.service: (\d+\.\d)", result.stdout)
    assert score is not None, result.stdout[-500:]
    assert float(score[1]) <= MAX_EXPOSURE


@analyze
def test_verify_is_clean_with_an_existing_binary(tmp_path: Path) -> None:
    """Clean once the binary exists; as shipped, the missing binary is its only complaint."""
    copy = tmp_path / "portguard.service"
    copy.write_text(UNIT.read_text().replace(BINARY, shutil.which("true") or "/bin/true"))
    result = analyze_run("verify", str(copy), cwd=tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    shipped = analyze_run("verify", str(UNIT), cwd=tmp_path).stderr.splitlines()
    assert shipped and all(f"{BINARY} is not executable" in line for line in shipped), shipped


@analyze
def test_verify_reports_what_it_dislikes(tmp_path: Path) -> None:
    """The check above can fail: verify does complain (on stderr, still exiting 0)."""
    copy = tmp_path / "portguard.service"
    text = UNIT.read_text().replace(BINARY, shutil.which("true") or "/bin/true")
    copy.write_text(text.replace("[Service]\n", "[Service]\nWatchDogSec=5s\n"))  # misspelt
    result = analyze_run("verify", str(copy), cwd=tmp_path)
    assert "Unknown key 'WatchDogSec'" in result.stderr


def test_the_daemon_speaks_the_notify_protocol_to_it() -> None:
    service = settings("Service")
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"  # workers never notify: the parent does
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "Restart") == "on-failure"
    assert one(service, "KillMode") == "mixed"  # SIGTERM to the main process only
    assert seconds(one(service, "WatchdogSec")) >= 10  # pinged every quarter of it
    assert seconds(one(service, "TimeoutStopSec")) > 10  # the forked parent's grace for workers


def test_cap_net_admin_is_the_only_capability() -> None:
    service = settings("Service")
    assert one(service, "User") == "portguard" and one(service, "Group") == "portguard"
    assert words(service["CapabilityBoundingSet"]) == ["CAP_NET_ADMIN"]
    assert words(service["AmbientCapabilities"]) == ["CAP_NET_ADMIN"]
    assert one(service, "NoNewPrivileges") == "yes"
    assert "PermissionsStartOnly" not in service and not any(
        value.startswith(("+", "!")) for key in ("ExecStartPre", "ExecStart", "ExecReload")
        for value in service.get(key, [])
    )  # fmt: skip  # nothing runs with more privileges


def test_starts_and_checks_the_default_config() -> None:
    service = settings("Service")
    config_path = str(cli.DEFAULT_CONFIG)
    assert one(service, "ExecStart") == f"{BINARY} run --config {config_path}"
    assert one(service, "ExecStartPre") == f"{BINARY} check --config {config_path}"
    assert f"/etc/{one(service, 'ConfigurationDirectory')}" == str(cli.DEFAULT_CONFIG.parent)
    assert DEFAULT_RULES_PATH.parent == cli.DEFAULT_CONFIG.parent


def test_writable_directories_are_the_ones_the_daemon_uses() -> None:
    service = settings("Service")
    assert one(service, "ProtectSystem") == "strict"  # everything else is read-only
    assert Path("/run", one(service, "RuntimeDirectory")) == DEFAULT_CONTROL_SOCKET.parent
    assert Path("/var/lib", one(service, "StateDirectory")) == DEFAULT_STATE_DIR
    logs = Path("/var/log", one(service, "LogsDirectory"))
    shipped = (Path(portguard.__file__).parent / "shipped" / "portguard.toml").read_text()
    assert str(logs) in shipped  # the example file output points there
    assert "ReadWritePaths" not in service


def test_proc_keeps_the_queue_counters_visible() -> None:
    """ProcSubset=pid would hide the kernel's queue counters, /proc/self/net/netfilter included
    (tests/integration/test_unprivileged.py shows it)."""
    service = settings("Service")
    assert service.get("ProcSubset", ["all"]) == ["all"]
    assert queuestats.QUEUE_STATS_FILE.parts[:2] == ("/", "proc")
    assert "netfilter" in queuestats.QUEUE_STATS_FILE.parts
    assert one(service, "ProtectProc") == "invisible"


def test_sockets_the_daemon_opens_are_allowed() -> None:
    """NFQUEUE, conntrack and nft/iptables-nft: netlink; control socket: unix; syslog, metrics
    and DNS: inet. Nothing else (no packet sockets, no raw sockets: no CAP_NET_RAW)."""
    families = words(settings("Service")["RestrictAddressFamilies"])
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]


def test_ordered_after_the_firewall_services() -> None:
    unit = settings("Unit")
    after = words(unit["After"])
    for service in ("nftables.service", "netfilter-persistent.service", "iptables.service"):
        assert service in after
    assert "network-pre.target" in words(unit["Before"])
    assert words(settings("Install")["WantedBy"]) == ["multi-user.target"]
