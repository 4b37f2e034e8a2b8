"""Self-healing hooks: another tool breaks portguard's hook, the running daemon puts it back.

The real daemon enforces the shipped ISP rules in the lab's gateway (subscriber -> MX port 25 is
rejected with a RST). Each test breaks the hook inside the gateway namespace the way other tools
do (`iptables -F`, `nft flush ruleset`, an ACCEPT inserted above portguard's jump), checks that
the break took effect, then measures how long until that connection is refused again (connects
in between may get through: that is the hole being measured) and finds the `hook-repaired`
event in the daemon's file log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from netns import Netns

from lab import Lab
from lab import addresses as a
from lab.daemon import HOOK_PORTS, LabDaemon, hooks_installed, hooks_leftover
from portguard.io.hooks.backend import HookSpec, SourceLimit
from portguard.io.hooks.iptables import IptablesBackend

REPAIR_LIMIT = 5.0  # seconds: the promise
SPEC = HookSpec(
    queue_num=0,
    workers=1,
    ports=HOOK_PORTS,
    chains=("forward",),
    fail_open=False,
    per_source=SourceLimit(200, 1000, 64),
)  # the daemon's default [queue] per_source
REPAIR_TIMES: dict[str, float] = {}

# Connects from the subscriber to the MX's port 25 until one is refused (a RST: the hook is
# back); prints "refused <monotonic time> <connections that got through>" or "never ...".
PROBE = """
import socket, sys, time
addr, port, source, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
deadline, through = time.monotonic() + limit, 0
while time.monotonic() < deadline:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        sock.bind((source, 0))
        try:
            sock.connect((addr, port))
            through += 1
        except ConnectionRefusedError:
            print("refused", time.monotonic(), through)
            sys.exit(0)
        except OSError:
            pass
    time.sleep(0.02)
print("never", time.monotonic(), through)
"""


@pytest.fixture(scope="module", autouse=True)
def report_repair_times() -> Iterator[None]:
    yield
    print("\ntime to repair:", {case: f"{s:.2f} s" for case, s in REPAIR_TIMES.items()})


def gw(lab: Lab) -> Netns:
    return Netns(lab.ns("gw"))


def tamper(lab: Lab, commands: str, show: str) -> str:
    """Run shell `commands` in the gateway, then `show`; what `show` printed right after."""
    proc = lab.run("gw", ["sh", "-ec", f"{commands}\n{show}"], capture_output=True, text=True,
                   timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused_again(lab: Lab, version: int, since: float) -> tuple[float, int]:
    """Seconds from `since` until subscriber -> MX:25 is refused again; connects let through."""
    argv = [sys.executable, "-c", PROBE, a.MX.family(version), str(a.PORT_SMTP),
            a.SUBSCRIBER.family(version), str(REPAIR_LIMIT * 2)]  # fmt: skip
    proc = lab.run("sub", argv, capture_output=True, text=True, timeout=60)
    outcome, at, through = proc.stdout.split()
    assert outcome == "refused", f"still not enforced after {REPAIR_LIMIT * 2} s: {proc.stderr}"
    return float(at) - since, int(through)


def repairs(daemon: LabDaemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event", {}).get("action") == "hook-repaired"]


def new_repair(daemon: LabDaemon, before: int, timeout: float = 3.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = repairs(daemon)
        if len(found) > before:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no new hook-repaired event in the file log: {daemon.events()[-3:]}")


def assert_repaired(
    lab: Lab,
    daemon: LabDaemon,
    case: str,
    started: float,
    before: int,
    versions: tuple[int, ...],
    spec: HookSpec = SPEC,
) -> dict[str, Any]:
    """Enforcement is back within the limit for each IP version, the file log has the event
    and the hook is complete again."""
    for version in versions:
        elapsed, through = refused_again(lab, version, started)
        REPAIR_TIMES[f"{case} ipv{version}"] = elapsed
        print(f"{case} ipv{version}: enforced again after {elapsed:.2f} s, {through} got through")
        assert elapsed < REPAIR_LIMIT, f"{case}: enforcement back only after {elapsed:.2f} s"
    event = new_repair(daemon, before)
    assert event["event"]["dataset"] == "portguard.lifecycle"
    assert event["portguard"]["backend"] == "iptables"
    assert event["portguard"]["problem"] in event["message"]
    status = IptablesBackend(gw(lab).runner).status(spec)
    assert status.complete, status.detail
    return event


def test_the_lab_daemon_uses_iptables(lab: Lab, daemon: LabDaemon) -> None:
    assert hooks_installed(lab)
    assert IptablesBackend(gw(lab).runner).status(SPEC).complete  # the tests below rely on it


def test_iptables_flush_of_every_chain(lab: Lab, daemon: LabDaemon) -> None:
    before = len(repairs(daemon))
    started = time.monotonic()
    shown = tamper(lab, "iptables -w -F", "iptables -w -S")
    assert "NFQUEUE" not in shown and "-j PORTGUARD" not in shown, shown  # the hole is real
    event = assert_repaired(lab, daemon, "iptables -F", started, before, (4,))
    assert "iptables: 0 jumps from FORWARD" in event["portguard"]["problem"]


@pytest.mark.parametrize(("family", "version"), [("iptables", 4), ("ip6tables", 6)])
def test_flush_of_forward(lab: Lab, daemon: LabDaemon, family: str, version: int) -> None:
    before = len(repairs(daemon))
    started = time.monotonic()
    shown = tamper(lab, f"{family} -w -F FORWARD", f"{family} -w -S FORWARD")
    assert "PORTGUARD" not in shown, shown
    event = assert_repaired(lab, daemon, f"{family} -F FORWARD", started, before, (version,))
    assert f"{family}: 0 jumps from FORWARD" in event["portguard"]["problem"]


@pytest.mark.parametrize(("family", "version"), [("iptables", 4), ("ip6tables", 6)])
def test_accept_above_the_jump(lab: Lab, daemon: LabDaemon, family: str, version: int) -> None:
    before = len(repairs(daemon))
    started = time.monotonic()
    shown = tamper(lab, f"{family} -w -I FORWARD 1 -p tcp -j ACCEPT", f"{family} -w -S FORWARD")
    assert shown.splitlines()[1] == "-A FORWARD -p tcp -j ACCEPT", shown
    event = assert_repaired(lab, daemon, f"{family} ACCEPT above", started, before, (version,))
    assert "FORWARD does not begin with the jump to PORTGUARD" in event["portguard"]["problem"]
    rules = gw(lab).run(family, "-w", "-S", "FORWARD").splitlines()[1:]
    assert rules == ["-A FORWARD -p tcp -j PORTGUARD", "-A FORWARD -p tcp -j ACCEPT"]
    gw(lab).run(family, "-w", "-D", "FORWARD", "-p", "tcp", "-j", "ACCEPT")


def test_nft_flush_ruleset(lab: Lab, daemon: LabDaemon) -> None:
    before = len(repairs(daemon))
    started = time.monotonic()
    shown = tamper(lab, "nft flush ruleset", "nft list ruleset")
    assert shown.strip() == "", shown  # iptables-nft's tables went too
    event = assert_repaired(lab, daemon, "nft flush ruleset", started, before, (4, 6))
    assert event["portguard"]["problem"].startswith("missing: ")


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "forked"])
def test_stopping_leaves_no_hook_even_while_one_is_broken(lab: Lab, workers: int) -> None:
    running = LabDaemon(lab, workers=workers)
    running.start()
    try:
        before = len(repairs(running))
        started = time.monotonic()
        tamper(lab, "iptables -w -F FORWARD", "true")
        case, spec = f"iptables -F FORWARD, {workers} workers", replace(SPEC, workers=workers)
        assert_repaired(lab, running, case, started, before, (4,), spec)
        tamper(lab, "ip6tables -w -F FORWARD", "true")  # broken while the daemon stops
    finally:
        code = running.stop()
    assert code == 0, running.stderr_tail()
    time.sleep(0.5)
    assert not hooks_leftover(lab), "a repair after the removal left a hook"
    actions = [e["event"]["action"] for e in running.events() if "event" in e]
    assert "hook-removed" in actions
    assert "hook-repaired" not in actions[actions.index("hook-removed") :], actions
