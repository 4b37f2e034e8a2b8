"""The real daemon on a real kernel queue, with real SMTP peers across the namespace lab.

Each test talks to `portguard run` started inside the lab's gateway namespace with the shipped
ISP rules. The kernel's own counter of queued packets (the id sequence in
/proc/net/netfilter/nfnetlink_queue) tells how many packets reached the daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_leftover
from lab.peers import read_jsonl

VERSIONS = pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])


def queued(lab: Lab) -> int:
    stats = lab.queue_stats()
    assert stats is not None, "the daemon's queue is not bound"
    return stats["id_sequence"]


def decision_for(daemon: LabDaemon, src: str, dst: str, dport: int) -> dict[str, Any]:
    """The newest decision event for (src, dst, dport), waiting briefly for the writer."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        found = [
            event for event in daemon.events()
            if event.get("event", {}).get("dataset") == "portguard.decision"
            and event["source"]["ip"] == src and event["destination"]["ip"] == dst
            and event["destination"]["port"] == dport
        ]  # fmt: skip
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no decision event for {src} -> {dst}:{dport}")


@VERSIONS
def test_subscriber_to_external_mx_is_rejected_with_rst(
    lab: Lab, daemon: LabDaemon, version: int
) -> None:
    result = lab.send_mail("sub", a.MX.family(version), 25, timeout=3)
    assert result.outcome == "refused", result  # a RST, not a timeout
    assert result.elapsed_ms < 100, result
    event = decision_for(daemon, a.SUBSCRIBER.family(version), a.MX.family(version), 25)
    assert event["event"]["action"] == "reject"
    assert event["event"]["type"] == ["connection", "denied"]
    assert event["rule"]["id"] == "block-25"
    assert event["network"]["direction"] == "outbound"
    assert event["network"]["community_id"].startswith("1:")
    assert lab.received(a.MX.family(version)) == [] or all(
        r["peer"].rsplit(":", 1)[0].strip("[]") != a.SUBSCRIBER.family(version)
        for r in lab.received(a.MX.family(version))
    )


@VERSIONS
def test_subscriber_relays_through_the_smarthost(lab: Lab, daemon: LabDaemon, version: int) -> None:
    result = lab.send_mail("sub", a.SMARTHOST.family(version), 25)
    assert result.outcome == "delivered", result
    event = decision_for(daemon, a.SUBSCRIBER.family(version), a.SMARTHOST.family(version), 25)
    assert (event["event"]["action"], event["rule"]["id"]) == ("allow", "smarthost")


@VERSIONS
@pytest.mark.parametrize(("port", "mode"), [(587, "starttls"), (465, "implicit")])
def test_submission_ports_are_open(
    lab: Lab, daemon: LabDaemon, version: int, port: int, mode: str
) -> None:
    for server in (a.SUBMISSION, a.MX):
        result = lab.send_mail("sub", server.family(version), port, mode=mode)
        assert result.outcome == "delivered", result
        event = decision_for(daemon, a.SUBSCRIBER.family(version), server.family(version), port)
        assert (event["event"]["action"], event["rule"]["id"]) == ("allow", "submission")


@VERSIONS
def test_business_customer_sends_direct(lab: Lab, daemon: LabDaemon, version: int) -> None:
    result = lab.send_mail("biz", a.MX.family(version), 25)
    assert result.outcome == "delivered", result
    event = decision_for(daemon, a.BUSINESS.family(version), a.MX.family(version), 25)
    assert (event["event"]["action"], event["rule"]["id"]) == ("allow", "business-25")


@VERSIONS
def test_inbound_25_to_subscribers_is_denied(lab: Lab, daemon: LabDaemon, version: int) -> None:
    result = lab.send_mail("net", a.SUBSCRIBER.family(version), 25, timeout=3)
    assert result.outcome == "refused", result
    event = decision_for(daemon, a.INTERNET.family(version), a.SUBSCRIBER.family(version), 25)
    assert event["network"]["direction"] == "inbound"
    assert (event["event"]["action"], event["rule"]["id"]) == ("reject", "inbound-25-subscribers")


def test_unhooked_ports_never_reach_the_daemon(lab: Lab, daemon: LabDaemon) -> None:
    before = queued(lab)
    for version in (4, 6):
        assert lab.send_mail("sub", a.MX.family(version), 2525).outcome == "delivered"
        port80 = lab.send_mail("sub", a.MX.family(version), 80, connect_only=True, timeout=3)
        assert port80.outcome == "refused"  # nothing listens on 80: the server's own RST
    assert queued(lab) == before
    assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"
    assert queued(lab) == before + 1  # the counter does move for a hooked port


def test_a_100_mb_message_stays_in_the_kernel(lab: Lab, daemon: LabDaemon) -> None:
    before = queued(lab)
    size = 100 * 1024 * 1024
    result = lab.send_mail("biz", a.MX.v4, 25, size=size, timeout=120)
    assert result.outcome == "delivered", result
    assert queued(lab) - before == 1  # only the SYN was queued; the stream stayed in the kernel
    sizes = [r["size"] for r in lab.received(a.MX.v4)]
    assert any(s >= size for s in sizes)


def test_sighup_reloads_and_a_bad_file_keeps_the_old_policy(lab: Lab, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "all-25"\ndport = [25]\naction = "reject"\n')
    running = LabDaemon(lab, rules=[rules])
    running.start()
    try:
        assert lab.send_mail("biz", a.MX.v4, 25, timeout=3).outcome == "refused"
        rules.write_text('[[rule]]\nid = "all-25"\ndport = [25]\naction = "allow"\n')
        reload_and_wait(running, "reload")
        assert lab.send_mail("biz", a.MX.v4, 25).outcome == "delivered"
        rules.write_text('[[rule]]\nid = "all-25"\ndport = [99999]\naction = "reject"\n')
        failed = reload_and_wait(running, "reload-failed")
        assert any(f"{rules}:3:" in message for message in failed["portguard"]["errors"])
        assert lab.send_mail("biz", a.MX.v6, 25).outcome == "delivered"  # old policy in force
    finally:
        assert running.stop() == 0


def reload_and_wait(running: LabDaemon, action: str) -> dict[str, Any]:
    assert running.proc is not None
    seen = len(lifecycle(running, action))
    running.proc.send_signal(signal.SIGHUP)  # reaches python inside `ip netns exec`
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = lifecycle(running, action)
        if len(events) > seen:
            return events[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {action} event after SIGHUP")


def lifecycle(running: LabDaemon, action: str) -> list[dict[str, Any]]:
    return [
        e for e in running.events()
        if e["event"].get("dataset") == "portguard.lifecycle" and e["event"]["action"] == action
    ]  # fmt: skip


def hook_status(lab: Lab, config: Path) -> subprocess.CompletedProcess[str]:
    return lab.run("gw", lab.python("portguard", "hook", "status", "--config", str(config)),
                   capture_output=True, text=True, timeout=30)  # fmt: skip


@pytest.mark.parametrize(
    ("fail_mode", "workers"), [("closed", 1), ("open", 1), ("closed", 2), ("open", 2)]
)
def test_kill_9_fails_by_fail_mode_and_a_restart_cleans_up(
    lab: Lab, fail_mode: str, workers: int
) -> None:
    running = LabDaemon(lab, fail_mode=fail_mode, workers=workers)
    running.start()
    assert running.proc is not None
    os.kill(running.proc.pid, signal.SIGKILL)
    running.proc.wait(10)
    deadline = time.monotonic() + 5  # forked workers die with their parent (PDEATHSIG)
    while any(lab.queue_stats(n) for n in range(workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(lab.queue_stats(n) for n in range(workers)), "a worker outlived the daemon"
    after_crash = lab.send_mail("sub", a.SMARTHOST.v4, 25, timeout=2)
    expected = "timeout" if fail_mode == "closed" else "delivered"
    assert after_crash.outcome == expected, after_crash
    restarted = LabDaemon(lab, fail_mode=fail_mode, workers=workers)
    restarted.start()
    try:
        assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome == "refused"
        assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"
        status = hook_status(lab, restarted.config)
        assert status.returncode == 0, status.stderr
        assert "rule sets: 1" in status.stdout, status.stdout
    finally:
        assert restarted.stop() == 0
    assert not hooks_leftover(lab)


def test_two_workers_share_the_load(lab: Lab) -> None:
    running = LabDaemon(lab, workers=2)
    running.start()
    try:
        # the kernel spreads by address pair (not ports), so use many pairs
        for version in (4, 6):
            for server in (a.MX, a.SMARTHOST, a.SUBMISSION):
                assert lab.send_mail("biz", server.family(version), 25).outcome == "delivered"
                expected = "delivered" if server is a.SMARTHOST else "refused"
                result = lab.send_mail("sub", server.family(version), 25, timeout=3)
                assert result.outcome == expected, result
        stats = [lab.queue_stats(n) for n in (0, 1)]
        assert all(s is not None and s["id_sequence"] > 0 for s in stats), stats  # both decided
    finally:
        assert running.stop() == 0
    assert not hooks_leftover(lab)


def test_a_second_daemon_on_the_same_queue_refuses_and_leaves_the_first_alone(
    lab: Lab, daemon: LabDaemon
) -> None:
    second = lab.run("gw", lab.python("portguard", "run", "--config", str(daemon.config)),
                     capture_output=True, text=True, timeout=30)  # fmt: skip
    assert second.returncode == 1
    assert "queue 0 is already bound" in second.stderr
    assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome == "refused"
    assert lab.send_mail("sub", a.SMARTHOST.v4, 25).outcome == "delivered"


def test_hook_cli_install_twice_status_and_remove(lab: Lab, tmp_path: Path) -> None:
    config = LabDaemon(lab).config  # a config only; this daemon is never started

    def cli(action: str) -> subprocess.CompletedProcess[str]:
        argv = lab.python("portguard", "hook", action, "--config", str(config))
        return lab.run("gw", argv, capture_output=True, text=True, timeout=30)

    try:
        assert cli("install").returncode == 0
        again = cli("install")
        assert again.returncode == 0 and "rule sets: 1" in again.stdout, again.stdout
        status = cli("status")
        assert status.returncode == 0 and "installed: yes; complete: yes" in status.stdout
    finally:
        removed = cli("remove")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not hooks_leftover(lab)
    assert cli("status").returncode == 3  # nothing installed


@pytest.mark.parametrize("workers", [1, 2])
def test_portguard_reload_answers_with_the_check_result(
    lab: Lab, tmp_path: Path, workers: int
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "all-25"\ndport = [25]\naction = "reject"\n')
    running = LabDaemon(lab, rules=[rules], workers=workers)
    running.start()

    def reload() -> subprocess.CompletedProcess[str]:
        argv = lab.python("portguard", "reload", "--config", str(running.config))
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    try:
        assert lab.send_mail("biz", a.MX.v4, 25, timeout=3).outcome == "refused"
        rules.write_text('[[rule]]\nid = "all-25"\ndport = [25]\naction = "allow"\n')
        done = reload()
        assert done.returncode == 0, done.stderr
        assert "reloaded: policy" in done.stdout
        time.sleep(0.3)  # forked workers reload on the SIGHUP their parent sends
        assert lab.send_mail("biz", a.MX.v4, 25).outcome == "delivered"
        rules.write_text('[[rule]]\nid = "all-25"\naction = "nope"\n')
        refused = reload()
        assert refused.returncode == 1
        assert f"{rules}:3:" in refused.stderr and "stays in force" in refused.stderr
        assert lab.send_mail("biz", a.MX.v6, 25).outcome == "delivered"
    finally:
        assert running.stop() == 0


def test_reload_without_a_daemon_says_so(tmp_path: Path) -> None:
    config = tmp_path / "portguard.toml"
    config.write_text(f'[daemon]\ncontrol_socket = "{tmp_path / "none.sock"}"\n')
    argv = [sys.executable, "-m", "portguard", "reload", "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "no daemon" in done.stderr


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_a_full_queue_follows_the_fail_mode(lab: Lab, fail_mode: str) -> None:
    """A daemon that stops reading (SIGSTOP) lets the queue fill: fail-open passes new
    connections (the queue flag the daemon sets), fail-closed drops them."""
    running = LabDaemon(lab, fail_mode=fail_mode, max_len=2)
    running.start()
    assert running.proc is not None
    pids = [int(p) for p in lab.run("gw", ["pgrep", "-f", str(running.config)],
                                    capture_output=True, text=True).stdout.split()]  # fmt: skip
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        for _ in range(2):  # fill the queue: these SYNs wait for a verdict
            lab.send_mail("sub", a.SMARTHOST.v4, 25, timeout=0.5, connect_only=True)
        result = lab.send_mail("sub", a.SMARTHOST.v4, 25, timeout=2)
        stats = lab.queue_stats()
        assert stats is not None
        if fail_mode == "open":
            assert result.outcome == "delivered", result
        else:
            assert result.outcome == "timeout", result
            assert stats["queue_dropped"] > 0
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        assert running.stop() == 0


LIMITED = """
[[rule]]
id = "business-25"
src = "203.0.113.0/24"
dport = [25]
direction = "outbound"
action = "allow"
limit = { rate = "5/minute", burst = 5, per = "src", exceed = "reject" }
"""


def test_rate_limit_rejects_the_sixth_connection_of_one_customer_only(
    lab: Lab, tmp_path: Path
) -> None:
    rules = tmp_path / "limits.toml"
    rules.write_text(LIMITED)
    other = "203.0.113.11"
    lab.run("biz", ["ip", "addr", "add", f"{other}/24", "dev", "biz0"], check=True)
    running = LabDaemon(lab, rules=[rules])
    running.start()
    try:
        outcomes = [lab.send_mail("biz", a.MX.v4, 25, timeout=3).outcome for _ in range(6)]
        assert outcomes == ["delivered"] * 5 + ["refused"], outcomes
        event = decision_for(running, a.BUSINESS.v4, a.MX.v4, 25)
        assert (event["event"]["action"], event["rule"]["id"]) == ("reject", "business-25")
        assert event["portguard"]["limit"]["exceeded"] is True
        assert event["portguard"]["limit"]["key"] == a.BUSINESS.v4
        assert "5/minute" in event["portguard"]["reason"]
        assert lab.send_mail("biz", a.MX.v4, 25, source=other).outcome == "delivered"
    finally:
        assert running.stop() == 0
        lab.run("biz", ["ip", "addr", "del", f"{other}/24", "dev", "biz0"])


def test_the_daemon_and_explain_agree_on_real_connections(
    lab: Lab, every_deny_daemon: LabDaemon
) -> None:
    daemon = every_deny_daemon
    import ipaddress

    from lab.daemon import SHIPPED_RULES
    from portguard.core.policy.model import Connection, Direction
    from portguard.io.policyfiles import load_ruleset

    ruleset = load_ruleset([SHIPPED_RULES])
    cases = [
        (ns, host, server, port, Direction.OUTBOUND)
        for ns, host in (("sub", a.SUBSCRIBER), ("biz", a.BUSINESS))
        for server in (a.MX, a.SMARTHOST, a.SUBMISSION)
        for port in (25, 465, 587)
    ] + [
        ("net", a.INTERNET, target, 25, Direction.INBOUND) for target in (a.SUBSCRIBER, a.BUSINESS)
    ]
    for ns, host, server, port, direction in cases:
        for version in (4, 6):
            src, dst = host.family(version), server.family(version)
            mode = {465: "implicit", 587: "starttls"}.get(port, "plain")
            lab.send_mail(ns, dst, port, mode=mode, connect_only=True, timeout=2)
            event = decision_for(daemon, src, dst, port)
            conn = Connection(version, int(ipaddress.ip_address(src)),
                              int(ipaddress.ip_address(dst)), port, direction)  # fmt: skip
            explained = ruleset.explain(conn).decision
            assert event["network"]["direction"] == direction.value
            assert (event["rule"]["id"], event["event"]["action"]) == (
                explained.rule_id, explained.action.value), (src, dst, port)  # fmt: skip


BOT = """
import socket, sys
refused = 0
for _ in range(int(sys.argv[3])):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    except ConnectionRefusedError:
        refused += 1
print(refused)
"""


def test_a_retrying_bot_makes_a_few_lines_whose_counts_add_up(lab: Lab) -> None:
    from portguard.core.events.flood import represented

    running = LabDaemon(lab)  # flood control on, 60 s window
    running.start()
    try:
        bot = lab.run("sub", [sys.executable, "-c", BOT, a.MX.v4, "25", "10000"],
                      capture_output=True, text=True, timeout=300)  # fmt: skip
        assert bot.stdout.strip() == "10000", bot.stderr
    finally:
        assert running.stop() == 0  # the summary is written at stop
    lines = [e for e in running.events() if e["event"].get("dataset") == "portguard.decision"
             and e["source"]["ip"] == a.SUBSCRIBER.v4]  # fmt: skip
    assert len(lines) <= 5, len(lines)
    assert sum(represented(e) for e in lines) == 10000
    summary = lines[-1]
    assert summary["portguard"]["aggregate"]["count"] == 10000
    assert summary["rule"]["id"] == "block-25" and summary["event"]["action"] == "reject"


def test_sigusr1_reopens_the_log_file_after_rotation(lab: Lab) -> None:
    running = LabDaemon(lab, flood_window=0)
    running.start()
    rotated = running.events_path.with_suffix(".jsonl.1")
    try:
        assert lab.send_mail("sub", a.MX.v4, 25, timeout=3).outcome == "refused"
        decision_for(running, a.SUBSCRIBER.v4, a.MX.v4, 25)
        running.events_path.rename(rotated)
        assert running.proc is not None
        running.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert lab.send_mail("sub", a.MX.v6, 25, timeout=3).outcome == "refused"
        event = decision_for(running, a.SUBSCRIBER.v6, a.MX.v6, 25)  # in the new file
        assert event["rule"]["id"] == "block-25"
    finally:
        assert running.stop() == 0
    # decisions only: a flow end of an earlier test's connection to the MX may come any time
    assert a.MX.v4 in decided_destinations(rotated)
    assert a.MX.v4 not in decided_destinations(running.events_path)


def decided_destinations(path: Path) -> set[str]:
    return {e["destination"]["ip"] for e in read_jsonl(path)
            if e["event"].get("dataset") == "portguard.decision"}  # fmt: skip
