"""`sudo make demo`: portguard on a lab gateway between a subscriber, a business and the internet.

    python -m lab.demo [--no-daemon] [--timeout S] [--keep-workdir]

Builds the namespace lab, starts real SMTP servers, starts the real daemon in the gateway with
the shipped rules (and the demo's fan-out detector), makes every case of `lab.cases.CASES` over
IPv4 and IPv6, and prints what each client saw next to the daemon's verdict and rule; then a
bot on the subscriber line is caught, quarantined and released (`lab.demobot`). Ctrl-C or
SIGTERM at any point stops everything and removes the namespaces. Exit code 0 when every case
went as expected, 1 when one did not, 2 when the lab or the daemon could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from lab import addresses as a
from lab.cases import (
    CASES,
    Attempt,
    Case,
    all_matched,
    field,
    is_decision,
    plan,
    render_table,
    rows,
)
from lab.daemon import SHIPPED_RULES, LabDaemon, hooks_leftover
from lab.demobot import abuse_report, catch_a_bot, detector_rules
from lab.netns import LabError
from lab.topology import Lab, client_address
from portguard.core.events.record import LIFECYCLE_DATASET

EXIT_MISMATCH, EXIT_SETUP, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143
DENY_CACHE = 10  # seconds: [queue] deny_cache as shipped


class Terminated(Exception):
    """SIGTERM arrived: unwind (removing the lab) and exit 143."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def say(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def run_attempt(lab: Lab, case: Case, version: int, timeout: float) -> Attempt:
    dst = case.to.family(version)
    src = client_address(case.from_ns, dst)
    started = time.time()
    result = lab.send_mail(case.from_ns, dst, case.port, mode=case.mode, timeout=timeout)
    return Attempt(case, version, src, dst, result, started, time.time())


def run_attempts(lab: Lab, cases: Sequence[Case], timeout: float, out: TextIO) -> list[Attempt]:
    attempts = []
    for case, version in plan(cases):
        attempt = run_attempt(lab, case, version, timeout)
        say(out, f"  {attempt.label}: {attempt.result.outcome}")
        attempts.append(attempt)
    return attempts


def wait_for_events(
    daemon: LabDaemon, attempts: Sequence[Attempt], timeout: float = 3.0
) -> list[dict[str, Any]]:
    """The daemon's events, once every attempt that expects one has one (or at `timeout`)."""
    deadline = time.monotonic() + timeout
    events = daemon.events()
    while not all_matched(attempts, events) and time.monotonic() < deadline:
        time.sleep(0.1)
        events = daemon.events()
    return events


def describe_lab(lab: Lab, out: TextIO) -> None:
    say(out, f"lab {lab.prefix}: namespaces {', '.join(lab.names.values())}")
    say(out, f"  subscriber {a.SUBSCRIBER.v4} {a.SUBSCRIBER.v6}")
    say(out, f"  business   {a.BUSINESS.v4} {a.BUSINESS.v6}")
    say(out, f"  MX {a.MX.v4}, smarthost {a.SMARTHOST.v4}, submission {a.SUBMISSION.v4}")
    say(out, f"  gateway {lab.ns('gw')}: WAN interface {a.GW_WAN_IF}")


def start_daemon(lab: Lab, rules: Sequence[Path], command: Sequence[str], out: TextIO) -> LabDaemon:
    # the shipped config's deny cache (the lab turns it off unless asked: floods measure it)
    daemon = LabDaemon(lab, rules, command=command, deny_cache=DENY_CACHE)
    say(out, f"starting portguard in {lab.ns('gw')} (config {daemon.config})")
    daemon.start()
    stats = lab.queue_stats(daemon.queue_num)
    say(out, f"portguard ready: queue {daemon.queue_num} bound ({stats})")
    return daemon


def stop_daemon(lab: Lab, daemon: LabDaemon, out: TextIO) -> None:
    code = daemon.stop()
    left = "LEFT BEHIND" if hooks_leftover(lab) else "removed"
    say(out, f"portguard stopped with SIGTERM: exit code {code}, hooks {left}")
    lifecycle = [e for e in daemon.events() if field(e, "event.dataset") == LIFECYCLE_DATASET]
    if lifecycle:
        actions = ", ".join(str(field(e, "event.action")) for e in lifecycle)
        say(out, f"lifecycle events: {actions}")


def report(
    attempts: Sequence[Attempt], events: Sequence[dict[str, Any]], with_daemon: bool, out: TextIO
) -> bool:
    decisions = [event for event in events if is_decision(event)]
    table = rows(attempts, decisions, with_daemon)
    say(out)
    say(out, render_table(table, with_daemon))
    if with_daemon:
        say(out)
        say(out, f"decision events ({len(decisions)}):")
        for event in decisions:
            say(out, json.dumps(event, separators=(",", ":")))
    return all(row.ok for row in table)


def demo(
    lab: Lab, out: TextIO, with_daemon: bool, cases: Sequence[Case], timeout: float,
    rules: Sequence[Path], command: Sequence[str],
) -> int:  # fmt: skip
    describe_lab(lab, out)
    lab.start_smtp_servers()
    say(out, "SMTP servers ready (25 plain, 587 STARTTLS, 465 implicit TLS, 2525 unhooked)")
    real = with_daemon and not command  # the real daemon (tests may run a stand-in)
    if real:
        rules = [*rules, detector_rules(lab.workdir)]
    daemon = start_daemon(lab, rules, command, out) if with_daemon else None
    say(out, "attempts:")
    attempts = run_attempts(lab, cases, timeout, out)
    events = wait_for_events(daemon, attempts) if daemon else []
    ok = report(attempts, events, with_daemon, out)
    if daemon and real:
        ok = catch_a_bot(lab, daemon, out) and ok
    if daemon:
        stop_daemon(lab, daemon, out)
    if daemon and real:
        abuse_report(lab, daemon, out)  # the stop closed the flood windows: all is in the log
    say(out, "all cases as expected" if ok else "SOME CASES DID NOT GO AS EXPECTED")
    return 0 if ok else EXIT_MISMATCH


def run_demo(
    out: TextIO = sys.stdout,
    *,
    with_daemon: bool = True,
    cases: Sequence[Case] = CASES,
    timeout: float = 3.0,
    rules: Sequence[Path] = (SHIPPED_RULES,),
    keep_workdir: bool = False,
    daemon_command: Sequence[str] = (),
) -> int:
    """Run the demo; the exit code (0 all as expected, 1 mismatch, 2 setup, 130/143 stopped).

    `daemon_command` replaces `python -m portguard` (tests use a stand-in daemon).
    """
    if os.geteuid() != 0:
        say(out, "the demo needs root (network namespaces): sudo make demo")
        return EXIT_SETUP
    try:
        with Lab(keep_workdir=keep_workdir) as lab:
            code = demo(lab, out, with_daemon, cases, timeout, rules, daemon_command)
    except LabError as exc:
        say(out, f"demo failed: {exc}")
        return EXIT_SETUP
    except KeyboardInterrupt:
        say(out, "\ninterrupted: lab removed")
        return EXIT_INTERRUPTED
    except Terminated:
        say(out, "terminated: lab removed")
        return EXIT_TERMINATED
    if keep_workdir:
        say(out, f"files kept in {lab.workdir}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__)
    parser.add_argument("--no-daemon", action="store_true", help="only the lab and the peers")
    parser.add_argument("--timeout", type=float, default=3.0, help="client timeout, seconds")
    parser.add_argument("--keep-workdir", action="store_true", help="keep config, logs, events")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_terminated)
    return run_demo(
        with_daemon=not args.no_daemon, timeout=args.timeout, keep_workdir=args.keep_workdir
    )


if __name__ == "__main__":
    sys.exit(main())
