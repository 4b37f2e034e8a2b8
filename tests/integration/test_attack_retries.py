"""A bot retrying denied SYNs at full rate, through the real daemon (iptables backend).

After a deny, the kernel answers later SYNs of the same (source, destination, port) with the
same verdict from its deny cache, without the queue, and counts them; the daemon reads the
counts back into the log at each rotation (`[queue] deny_cache` seconds, a reload, the stop).
So (a) the daemon decides only a handful of a flood's SYNs, the client gets a RST for every
one, and the log's represented counts add up exactly to the SYNs sent (with flood control
on and off); (b) every new destination still reaches the daemon; (c) a reload empties the
cache: a rule change takes effect at once; (d) a rate-limit deny is cached only when its
bucket takes at least the cache period to refill one token.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_leftover
from lab.peers import python_env
from tests.integration.test_attack_limits import hits, status

FLOOD_RATE = 3_000  # SYNs a second, paced (a rate the queue keeps up with before the cache)
FLOOD_SECONDS = 6.0
# the kernel's RSTs to the subscriber, counted in its own namespace (never the root one)
RST_COUNTER = ["INPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-s", a.MX.v4]

BLOCK_MX = f"""
[[rule]]
id = "bot-25"
src = "100.64.0.0/10"
dst = "{a.MX.v4}"
dport = [25]
direction = "outbound"
action = "reject"
"""

LIMITS = f"""
[[rule]]
id = "slow-refill"
src = "100.64.0.0/10"
dst = "{a.MX.v4}"
dport = [25]
direction = "outbound"
action = "allow"
limit = {{ rate = "1/minute", burst = 1, per = "src", exceed = "reject" }}

[[rule]]
id = "fast-refill"
src = "100.64.0.0/10"
dst = "{a.SMARTHOST.v4}"
dport = [25]
direction = "outbound"
action = "allow"
limit = {{ rate = "20/second", burst = 1, per = "src", exceed = "reject" }}
"""


def configured(daemon: LabDaemon, queue: str) -> LabDaemon:
    """`queue` lines added to the daemon's [queue] table (before it starts)."""
    text = daemon.config.read_text()
    daemon.config.write_text(text.replace("[queue]\n", f"[queue]\n{queue}\n", 1))
    return daemon


@pytest.fixture
def rst_counter(lab: Lab) -> Iterator[None]:
    lab.run("sub", ["iptables", "-I", *RST_COUNTER], check=True)
    yield
    lab.run("sub", ["iptables", "-D", *RST_COUNTER])


def rsts_seen(lab: Lab) -> int:
    proc = lab.run("sub", ["iptables", "-v", "-x", "-n", "-L", "INPUT"], capture_output=True,
                   text=True, check=True)  # fmt: skip
    return sum(int(line.split()[0]) for line in proc.stdout.splitlines() if a.MX.v4 in line)


def flood(lab: Lab, dst: str, rate: int = FLOOD_RATE, seconds: float = FLOOD_SECONDS) -> int:
    """SYNs from the subscriber to dst:25, each from a new source port; how many were sent."""
    argv = lab.python("lab.synflood", "--src", a.SUBSCRIBER.v4, "--dst", dst, "--dport", "25",
                      "--rate", str(rate), "--seconds", str(seconds))  # fmt: skip
    proc = lab.run("sub", argv, capture_output=True, text=True, timeout=120, env=python_env())
    assert proc.returncode == 0, proc.stderr
    sent: int = json.loads(proc.stdout.strip().splitlines()[-1])["sent"]
    return sent


def decided(lab: Lab, daemon: LabDaemon, rule: str) -> int:
    return hits(status(lab, daemon), rule)


def queue_losses(lab: Lab) -> int:
    stats = lab.queue_stats(0) or {}
    return int(stats.get("queue_dropped", 0)) + int(stats.get("user_dropped", 0))


def denies(daemon: LabDaemon, rule: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events()
            if e.get("event", {}).get("dataset") == "portguard.decision"
            and e.get("rule", {}).get("id") == rule
            and "denied" in e["event"]["type"]]  # fmt: skip


def represented(event: dict[str, Any]) -> int:
    aggregate = (event.get("portguard") or {}).get("aggregate")
    return 1 if aggregate is None else int(aggregate["suppressed"])


def kernel_hits(events: list[dict[str, Any]]) -> int:
    return sum(int(e["portguard"]["aggregate"].get("kernel", 0)) for e in events
               if "aggregate" in e.get("portguard", {}))  # fmt: skip


def started(lab: Lab, tmp_path: Path, rules: str, deny_cache: int = 10, **kw: Any) -> LabDaemon:
    """The daemon with `rules`, the deny cache (the shipped default: 10 s) and no per-source
    limit (a retrying bot is over it: the count is the cache's)."""
    path = tmp_path / "retries.toml"
    path.write_text(rules)
    daemon = configured(LabDaemon(lab, rules=[path], deny_cache=deny_cache, **kw),
                        "per_source = false")  # fmt: skip
    daemon.start()
    return daemon


def stopped(lab: Lab, daemon: LabDaemon) -> None:
    assert daemon.stop() == 0, daemon.stderr_tail()
    assert not hooks_leftover(lab)
    assert "portguard" not in lab.run("gw", ["ipset", "list", "-n"], capture_output=True,
                                      text=True).stdout  # fmt: skip


@pytest.mark.parametrize("flood_window", [60, 0])
def test_a_retrying_bot_is_answered_by_the_kernel_and_counted_exactly(
    lab: Lab, tmp_path: Path, rst_counter: None, flood_window: int
) -> None:
    """The default cache period (10 s) outlasts the flood: the stop reads the counts back."""
    daemon = started(lab, tmp_path, BLOCK_MX, flood_window=flood_window)
    try:
        links, losses, rsts = lab.link_drops(), queue_losses(lab), rsts_seen(lab)
        sent = flood(lab, a.MX.v4)
        time.sleep(1.0)  # the last RSTs are back
        made = decided(lab, daemon, "bot-25")
        rsts = rsts_seen(lab) - rsts
        lost = lab.link_drops() - links + queue_losses(lab) - losses
    finally:
        stopped(lab, daemon)
    events = denies(daemon, "bot-25")
    total = sum(represented(e) for e in events)
    print(
        f"\nsent {sent}: decided {made}, RSTs {rsts}, lost {lost}, logged {len(events)} "
        f"events standing for {total} ({kernel_hits(events)} answered by the kernel)"
    )
    assert made <= sent // 10, f"the daemon decided {made} of {sent} SYNs"
    assert rsts + lost == sent, "every SYN not lost on the way got its RST"
    assert total + lost == sent, "the log's counts add up to the SYNs sent"
    assert kernel_hits(events) == total - made


def test_every_new_destination_reaches_the_daemon(
    lab: Lab, tmp_path: Path, rst_counter: None
) -> None:
    """Ten destinations, a short flood to each: ten decisions at least, the rest cached
    (flood control off: the first deny to each destination is an event of its own)."""
    targets = [f"198.51.100.{host}" for host in range(100, 110)]
    rules = BLOCK_MX.replace(f'dst = "{a.MX.v4}"', 'dst = "198.51.100.0/24"')
    daemon = started(lab, tmp_path, rules, deny_cache=2, flood_window=0)
    try:
        sent = sum(flood(lab, target, rate=1_000, seconds=1.0) for target in targets)
        time.sleep(3.0)  # a rotation read the counts
        made = decided(lab, daemon, "bot-25")
    finally:
        stopped(lab, daemon)
    events = denies(daemon, "bot-25")
    reached = {e["destination"]["ip"] for e in events}
    assert reached == set(targets)
    assert len(targets) <= made <= sent // 10
    assert sum(represented(e) for e in events) == sent


def test_a_reload_empties_the_cache(lab: Lab, tmp_path: Path) -> None:
    """A cached reject, then a reload that allows the tuple: the next connection passes."""
    daemon = started(lab, tmp_path, BLOCK_MX)
    try:
        assert lab.send_mail("sub", a.MX.v4, 25, timeout=3, connect_only=True).outcome == "refused"
        before = decided(lab, daemon, "bot-25")
        flood(lab, a.MX.v4, rate=500, seconds=1.0)
        assert decided(lab, daemon, "bot-25") - before <= 5, "the tuple was not cached"
        (tmp_path / "retries.toml").write_text(BLOCK_MX.replace('"reject"', '"allow"'))
        reload = lab.python("portguard", "reload", "--config", str(daemon.config))
        proc = lab.run("gw", reload, capture_output=True, text=True, timeout=30, env=python_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outcome = lab.send_mail("sub", a.MX.v4, 25, timeout=3, connect_only=True).outcome
        assert outcome == "connected"
    finally:
        stopped(lab, daemon)


def test_a_rate_limit_deny_is_cached_only_when_a_token_refills_slower_than_the_cache(
    lab: Lab, tmp_path: Path
) -> None:
    """1/minute refills slower than the 10 s cache: cached. 20/second refills in 50 ms: every
    SYN over the limit reaches the daemon (and some pass: their token came back)."""
    daemon = started(lab, tmp_path, LIMITS)
    try:
        slow_sent = flood(lab, a.MX.v4, rate=500, seconds=2.0)
        fast_sent = flood(lab, a.SMARTHOST.v4, rate=500, seconds=2.0)
        time.sleep(1.0)
        slow, fast = decided(lab, daemon, "slow-refill"), decided(lab, daemon, "fast-refill")
        lost = queue_losses(lab)
    finally:
        stopped(lab, daemon)
    assert slow <= slow_sent // 10, f"slow-refill decided {slow} of {slow_sent}"
    assert fast + lost >= fast_sent, f"fast-refill decided {fast} of {fast_sent}"
    events = denies(daemon, "slow-refill")
    assert sum(represented(e) for e in events) == slow_sent - 1  # the first SYN was allowed
    assert all(re.match(r"matched rule", e["portguard"]["reason"]) for e in events)
