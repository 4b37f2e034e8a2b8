"""`portguard report` on the live daemon's log ranks a spambot first, with flood control on.

The real daemon runs in the lab's gateway with the shipped rules and the default flood control
(60 s windows: a bot's denies become its first event and one summary). A bot behind the
subscriber link (its own address, 100.64.10.66) sends SYNs to port 25 of many distinct mail
exchangers (addresses on the `net` namespace's lo), with lab/synflood.py, one run per
destination; a well-behaved subscriber makes one denied attempt with a real SMTP client. The
report of the daemon's file output must rank the bot first with exactly as many attempts as
SYNs sent and as many distinct destinations as it tried, the subscriber with one of each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon
from lab.peers import python_env

BOT = "100.64.10.66"  # a second subscriber address, on the subscriber link
MX_COUNT = 30  # distinct mail exchangers the bot tries (more than a detector's 20)
SYNS_EACH = 4  # SYNs per exchanger (each its own source port: an attempt of its own)


def mx(n: int) -> str:
    return f"198.51.100.{100 + n}"  # in the lab's server network, routed to `net`


@pytest.fixture(scope="module")
def exchangers(lab: Lab) -> Iterator[list[str]]:
    """The bot's address on the subscriber link, the exchangers' on `net`'s lo."""
    lab.run("sub", ["ip", "addr", "add", f"{BOT}/{a.LINK_PREFIX.v4}", "dev", a.SUB_IF],
            check=True)  # fmt: skip
    batch = "".join(f"addr add {mx(n)}/32 dev {a.SERVER_IF}\n" for n in range(MX_COUNT))
    lab.run("net", ["ip", "-batch", "-"], input=batch, text=True, check=True)
    yield [mx(n) for n in range(MX_COUNT)]


def bot_syns(lab: Lab, destinations: list[str]) -> int:
    """SYNs to port 25 of every destination; how many were sent."""
    sent = 0
    for destination in destinations:
        argv = lab.python("lab.synflood", "--src", BOT, "--dst", destination, "--dport", "25",
                          "--rate", str(SYNS_EACH * 10), "--seconds", "0.1")  # fmt: skip
        proc = lab.run("sub", argv, capture_output=True, text=True, timeout=30, env=python_env())
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.splitlines()[-1])
        assert result["errors"] == 0
        sent += int(result["sent"])
    return sent


def report(daemon: LabDaemon, *options: str) -> subprocess.CompletedProcess[str]:
    """`portguard report` on the daemon's file output, as any user, outside the lab."""
    argv = [sys.executable, "-m", "portguard", "report", "--log", str(daemon.events_path),
            *options]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=python_env())


def from_bot(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("source", {}).get("ip") == BOT]


def test_the_report_ranks_the_bot_first_with_every_attempt(
    lab: Lab, daemon: LabDaemon, exchangers: list[str]
) -> None:
    sent = bot_syns(lab, exchangers)
    refused = lab.send_mail("sub", a.MX.v4, 25, timeout=3)
    assert sent == MX_COUNT * SYNS_EACH and refused.outcome != "delivered"
    assert daemon.stop() == 0  # the open flood-control windows are written at stop

    folded = from_bot(daemon.events())
    assert len(folded) == 2  # flood control: the first deny and one summary
    assert folded[1]["portguard"]["aggregate"]["suppressed"] == sent - 1

    proc = report(daemon, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    bot, subscriber = rows
    assert (bot["rank"], bot["source"], bot["attempts"]) == (1, BOT, sent)
    assert (bot["destinations"], bot["destinations_exact"]) == (MX_COUNT, True)
    assert bot["ports"] == [25] and len(bot["sample"]) == 10
    assert set(s.rsplit(":", 1)[0] for s in bot["sample"]) <= set(exchangers)
    assert (subscriber["source"], subscriber["attempts"], subscriber["destinations"]) == (
        a.SUBSCRIBER.v4, 1, 1)  # fmt: skip

    table = report(daemon, "--top", "1")
    assert table.returncode == 0, table.stderr
    first = table.stdout.splitlines()[3].split()
    assert first[:4] == ["1", BOT, f"{sent:,}", str(MX_COUNT)]
