"""Crafted SYNs against the real daemon: odd but valid packets, replays, reverse-direction SYNs.

A spambot has its own TCP stack. Every packet here is one that a Linux mail server answers with
a SYN-ACK, crafted with scapy (tests/integration/synprobe.py) in the subscriber's or the
internet's namespace, and must be decided by the policy: a decision event from a rule, and no
SYN-ACK where the rule denies. The daemon runs with `fail_mode = "open"`, where a packet the
decoder refused used to be let through unmarked.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import addresses as a
from lab.daemon import SHIPPED_RULES, LabDaemon

PROBE = Path(__file__).with_name("synprobe.py")
REPLAY_RULE = (
    '[[rule]]\nid = "replay-limited"\nsrc = "100.64.10.10"\ndst = "198.51.100.27"\n'
    'dport = 25\naction = "allow"\nlimit = { rate = "1/minute", burst = 2, per = "src" }\n'
)
LIVENESS = 5.0  # seconds for an event to reach the file output


@pytest.fixture(scope="module")
def replay_rules(lab: Lab) -> Path:
    path = lab.workdir / "05-replay.toml"
    path.write_text(REPLAY_RULE)
    return path


@pytest.fixture(scope="module")
def daemon(lab: Lab, replay_rules: Path) -> Iterator[LabDaemon]:
    """fail_mode open (the mode where a refused decode used to pass) and every deny logged."""
    running = LabDaemon(lab, rules=[replay_rules, SHIPPED_RULES], fail_mode="open", flood_window=0)
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0


def probe(lab: Lab, role: str, **spec: Any) -> list[list[str]]:
    """Run synprobe.py in namespace `role`; the answers to each SYN it sent."""
    spec.setdefault("iface", {"sub": a.SUB_IF, "net": a.NET_IF}[role])
    argv = [sys.executable, str(PROBE), json.dumps(spec)]
    proc = lab.run(role, argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answers: list[list[str]] = json.loads(proc.stdout.splitlines()[-1])["answers"]
    return answers


def decisions(daemon: LabDaemon, src: str, sport: int, count: int = 1) -> list[dict[str, Any]]:
    """The decision events for connections from src:sport, once there are `count` of them."""
    deadline = time.monotonic() + LIVENESS
    while True:
        found = [
            event for event in daemon.events()
            if event.get("event", {}).get("dataset") == "portguard.decision"
            and event.get("source", {}).get("ip") == src
            and event["source"].get("port") == sport
        ]  # fmt: skip
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


CRAFTED = [
    pytest.param("lone-kind", 4, 41001, id="v4-options-end-in-a-lone-kind-byte"),
    pytest.param("lone-kind", 6, 41002, id="v6-options-end-in-a-lone-kind-byte"),
    pytest.param("destopts-9", 6, 41003, id="v6-behind-9-destination-options-headers"),
    pytest.param("destopts-1k", 6, 41004, id="v6-behind-a-1-KiB-destination-options-header"),
]


@pytest.mark.parametrize(("shape", "version", "sport"), CRAFTED)
def test_a_crafted_syn_linux_accepts_is_decided_by_the_policy(
    lab: Lab, daemon: LabDaemon, shape: str, version: int, sport: int
) -> None:
    src, dst = a.SUBSCRIBER.family(version), a.MX.family(version)
    answers = probe(lab, "sub", shape=shape, src=src, dst=dst, sport=sport, dport=25, seq=7)
    assert "SA" not in answers[0], f"the MX answered a SYN the policy rejects: {answers}"
    found = decisions(daemon, src, sport)
    assert [event["rule"]["id"] for event in found] == ["block-25"]
    assert found[0]["event"]["action"] == "reject"
    assert found[0]["destination"] == {"ip": dst, "port": 25}


def test_a_replayed_syn_spends_tokens_and_a_reload_applies_to_it(
    lab: Lab, daemon: LabDaemon, replay_rules: Path
) -> None:
    src, dst, sport = a.SUBSCRIBER.v4, a.SUBMISSION.v4, 41010
    replay = {"shape": "plain", "src": src, "dst": dst, "sport": sport, "dport": 25, "seq": 99}
    answers = probe(lab, "sub", **replay, count=6)  # the same tuple and ISN, reset after each
    handshakes = ["SA" in answer for answer in answers]
    assert handshakes == [True, True, False, False, False, False], answers
    found = decisions(daemon, src, sport, count=6)
    assert [event["event"]["action"] for event in found] == ["allow"] * 2 + ["reject"] * 4
    assert all(event["rule"]["id"] == "replay-limited" for event in found)
    assert [event["portguard"]["limit"]["exceeded"] for event in found] == [False] * 2 + [True] * 4
    assert len({event["portguard"]["flow_id"] for event in found}) == 6
    replay_rules.write_text("# the allow rule is gone\n")
    reload_and_wait(daemon)
    assert "SA" not in probe(lab, "sub", **replay)[0]
    last = decisions(daemon, src, sport, count=7)[-1]
    assert (last["rule"]["id"], last["event"]["action"]) == ("block-25", "reject")


def test_a_reverse_direction_syn_is_decided_on_its_own_direction(
    lab: Lab, daemon: LabDaemon
) -> None:
    sub, relay = a.SUBSCRIBER.v4, a.SMARTHOST.v4
    out = probe(lab, "sub", shape="plain", src=sub, dst=relay, sport=25, dport=25, seq=5)
    assert "SA" in out[0], out  # subscriber:25 -> smarthost:25 is allowed
    assert decisions(daemon, sub, 25)[0]["rule"]["id"] == "smarthost"
    # the kernel forgets the aborted connection (conntrack's close timeout, 10 s): do it now
    forget = ["conntrack", "-D", "-p", "tcp", "-s", sub, "-d", relay, "--sport", "25"]
    assert lab.run("gw", forget, capture_output=True, timeout=10).returncode == 0
    back = probe(lab, "net", shape="plain", src=relay, dst=sub, sport=25, dport=25, seq=9)
    assert "SA" not in back[0], f"the subscriber answered an inbound SYN on 25: {back}"
    found = decisions(daemon, relay, 25)
    assert [event["rule"]["id"] for event in found] == ["inbound-25-subscribers"]
    assert found[0]["network"]["direction"] == "inbound"


def reload_and_wait(running: LabDaemon) -> None:
    assert running.proc is not None
    seen = len(reloads(running))
    running.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + LIVENESS
    while len(reloads(running)) == seen:
        assert time.monotonic() < deadline, "no reload event after SIGHUP"
        time.sleep(0.05)


def reloads(running: LabDaemon) -> list[dict[str, Any]]:
    return [
        event for event in running.events()
        if event["event"].get("dataset") == "portguard.lifecycle"
        and event["event"]["action"] == "reload"
    ]  # fmt: skip
