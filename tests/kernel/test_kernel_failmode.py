"""Fail modes on the stock kernel's queue, with the nftables backend.

- A full queue (the daemon stopped with SIGSTOP, `max_len = 1`): with fail_mode "open" the
  kernel's FAIL_OPEN queue flag lets the overflow through, with "closed" it is dropped.
- No daemon at all (kill -9): the queue rule's `bypass` lets new connections through ("open"),
  without it they are dropped ("closed").
- A restart after the crash installs over the leftovers and ends up with one hook.
- `keep_on_stop`: SIGTERM leaves the table, so the hooked ports stay closed while stopped.
"""

from __future__ import annotations

import signal
from concurrent.futures import Future

from kernel_lab import crash, gw_runner, kill_group, lifecycle, send, threads_in, wait_for

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_leftover
from lab.smtpc import attempt
from portguard.io.hooks.nftables import NftablesBackend

BURST = 3
KEEP = "keep_on_stop = true"


def with_hook_options(daemon: LabDaemon, options: str) -> LabDaemon:
    text = daemon.config.read_text()
    daemon.config.write_text(text.replace("\n\n[rules]", f"\n{options}\n\n[rules]", 1))
    return daemon


def burst(lab: Lab) -> list[str]:
    """BURST connections at once from the subscriber to the smarthost; their outcomes."""
    import argparse

    args = argparse.Namespace(
        to=a.SMARTHOST.v4, port=25, mode="plain", size=0, timeout=4.0,
        source=a.SUBSCRIBER.v4, connect_only=True,
    )  # fmt: skip
    with threads_in(lab, "sub", BURST) as pool:
        futures: list[Future[tuple[str, str]]] = [pool.submit(attempt, args) for _ in range(BURST)]
        return [future.result(timeout=120)[0] for future in futures]


def full_queue(lab: Lab, daemon: LabDaemon) -> tuple[list[str], int]:
    """Outcomes of a burst while the daemon is stopped (its queue fills), and the drop count."""
    before = lab.queue_stats()
    assert before is not None
    kill_group(daemon, signal.SIGSTOP)
    try:
        outcomes = burst(lab)
        after = lab.queue_stats()
    finally:
        kill_group(daemon, signal.SIGCONT)
    assert after is not None
    return outcomes, after["queue_dropped"] - before["queue_dropped"]


def test_fail_open_passes_a_full_queues_overflow_and_bypasses_a_crashed_daemon(lab: Lab) -> None:
    daemon = LabDaemon(lab, fail_mode="open", max_len=1)
    daemon.start(timeout=120)
    try:
        # No "is it deciding" probe here: with room for one packet, a client's SYN retransmitted
        # while a slow (TCG) first decision is pending overflows the queue and passes: fail-open.
        outcomes, dropped = full_queue(lab, daemon)
        # FAIL_OPEN: the overflow is accepted, not dropped (the first SYN waits in the queue)
        assert outcomes.count("connected") >= BURST - 1 and dropped == 0, (outcomes, dropped)
        crash(daemon, lab)
        without = send(lab, "sub", a.MX.v4, 25, timeout=3)
        assert without.outcome == "delivered", without  # `bypass`: no daemon, the SYN passes
    finally:
        daemon.stop()
        NftablesBackend(gw_runner(lab)).remove()
    assert not hooks_leftover(lab)


def test_fail_closed_a_restart_over_a_crash_and_keep_on_stop(lab: Lab) -> None:
    """Closed: a full queue's overflow and, after kill -9, every new connection is dropped; a
    restart installs over the crashed run's table (one hook); with keep_on_stop SIGTERM leaves
    the table, so the hooked ports stay closed while stopped."""
    first = with_hook_options(LabDaemon(lab, max_len=1), KEEP)
    second = with_hook_options(LabDaemon(lab), KEEP)
    try:
        first.start(timeout=120)
        outcomes, dropped = full_queue(lab, first)
        assert "connected" not in outcomes and dropped >= BURST - 1, (outcomes, dropped)
        assert send(lab, "sub", a.MX.v6, 25, timeout=4).outcome == "refused"  # deciding again
        crash(first, lab)
        assert send(lab, "sub", a.SMARTHOST.v6, 25, timeout=3).outcome == "timeout"
        second.start(timeout=120)  # over the crashed run's table
        status = NftablesBackend(gw_runner(lab)).status()
        assert status.complete and status.rule_sets == 1, status
        assert send(lab, "sub", a.SMARTHOST.v6, 25).outcome == "delivered"
        assert send(lab, "sub", a.MX.v4, 25, timeout=4).outcome == "refused"
        assert second.stop() == 0, second.stderr_tail()
        wait_for("hook-kept", lambda: lifecycle(second, "hook-kept"))
        assert not lifecycle(second, "hook-removed")
        assert NftablesBackend(gw_runner(lab)).status().installed
        assert lab.queue_stats() is None  # hooked, nobody deciding: closed
        assert send(lab, "sub", a.SMARTHOST.v4, 25, timeout=3).outcome == "timeout"
    finally:
        first.stop()
        second.stop()
        NftablesBackend(gw_runner(lab)).remove()
    assert not hooks_leftover(lab)
    assert send(lab, "sub", a.SMARTHOST.v4, 25).outcome == "delivered"  # no hook: open
