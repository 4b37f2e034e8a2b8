"""Helpers of the kernel suite: clients without process start-ups, and the gateway's tables.

Under software emulation (TCG) every Python start-up costs seconds, so the clients of this suite
are threads of the pytest process itself: a thread joins a lab namespace with setns(2) (a network
namespace is per thread), and the sockets it opens live there. They run the lab's own SMTP
client (`lab.smtpc.attempt`) and session code (`lab.sessions.session`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from lab import Lab
from lab.daemon import LabDaemon
from lab.netns import NETNS_DIR
from lab.peers import SendResult
from lab.smtpc import attempt
from lab.topology import client_address
from portguard.io.hooks.runner import CommandResult, run_command

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace `name` (its sockets are made there)."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(fd)


def threads_in(lab: Lab, role: str, count: int = 1) -> ThreadPoolExecutor:
    """`count` worker threads inside the namespace of `role` (use it with `with`)."""
    return ThreadPoolExecutor(count, initializer=enter_netns, initargs=(lab.ns(role),))


def in_netns(lab: Lab, role: str, call: Callable[..., T], *args: Any) -> T:
    with threads_in(lab, role) as pool:
        return pool.submit(call, *args).result(timeout=600)


def send(
    lab: Lab,
    role: str,
    to: str,
    port: int,
    *,
    mode: str = "plain",
    size: int = 1000,
    timeout: float = 5.0,
    connect_only: bool = False,
) -> SendResult:
    """What `lab.send_mail` reports, without starting a client process."""
    args = argparse.Namespace(
        to=to, port=port, mode=mode, size=size, timeout=timeout,
        source=client_address(role, to), connect_only=connect_only,
    )  # fmt: skip
    started = time.perf_counter()
    outcome, detail = in_netns(lab, role, attempt, args)
    return SendResult(outcome, (time.perf_counter() - started) * 1000.0, detail)


def gw_runner(lab: Lab) -> Callable[[Sequence[str], str | None], CommandResult]:
    """A hook `Runner` whose commands run in the lab's gateway namespace."""

    def run(argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        result = run_command(lab.argv("gw", argv), stdin)
        return CommandResult(tuple(argv), result.returncode, result.stdout, result.stderr)

    return run


def gw(lab: Lab, *argv: str, check: bool = True) -> str:
    """A command's stdout in the gateway namespace."""
    proc = lab.run("gw", list(argv), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return str(proc.stdout)


def queued(lab: Lab, queue_num: int = 0) -> int:
    """Packets the kernel has queued so far (the queue's id sequence)."""
    stats = lab.queue_stats(queue_num)
    assert stats is not None, "the daemon's queue is not bound"
    return stats["id_sequence"]


def events(daemon: LabDaemon, dataset: str, action: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in daemon.events()
        if e.get("event", {}).get("dataset") == dataset
        and (action is None or e["event"].get("action") == action)
    ]  # fmt: skip


def lifecycle(daemon: LabDaemon, action: str) -> list[dict[str, Any]]:
    return events(daemon, "portguard.lifecycle", action)


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `condition` until it returns something true; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def decision(daemon: LabDaemon, src: str, dst: str, dport: int) -> dict[str, Any]:
    """The newest decision event for (src, dst, dport), waiting for the log writer."""

    def found() -> list[dict[str, Any]]:
        return [
            e for e in events(daemon, "portguard.decision")
            if (e["source"]["ip"], e["destination"]["ip"], e["destination"]["port"])
            == (src, dst, dport)
        ]  # fmt: skip

    return dict(wait_for(f"a decision for {src} -> {dst}:{dport}", found, 10)[-1])


def kill_group(daemon: LabDaemon, signum: signal.Signals) -> None:
    """Signal the daemon and every process it forked (its own session and process group)."""
    assert daemon.proc is not None
    os.killpg(daemon.proc.pid, signum)


def crash(daemon: LabDaemon, lab: Lab, workers: int = 1) -> None:
    """kill -9 the daemon; wait until no process holds its queues."""
    kill_group(daemon, signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait(30)
    wait_for("queues released", lambda: not any(lab.queue_stats(n) for n in range(workers)))


def portguard_table(lab: Lab) -> str:
    return gw(lab, "nft", "list", "ruleset")


def legacy_rules(lab: Lab) -> str:
    """iptables-legacy's and ip6tables-legacy's rules in the gateway (x_tables, not nftables)."""
    return "".join(
        subprocess.run(lab.argv("gw", [tool]), capture_output=True, text=True, timeout=60).stdout
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save")
    )
