"""What `portguard replay` prints: totals by rule and verdict, differences side by side."""

from __future__ import annotations

import json
from pathlib import Path

from portguard.cli.replaytext import differences, totals_table
from portguard.core.gate import Verdict
from portguard.core.policy.model import Direction
from portguard.core.replay import Counts, Decided, Difference

NOW = 1795798800.5
KEY = (4, 0x64400A0A, 0xC6336419, 40312, 587)


def decided(verdict: Verdict, rule: str) -> Decided:
    return Decided(7, NOW, KEY, Direction.OUTBOUND, verdict, rule, None)


def test_totals_table() -> None:
    counts = Counts(other=1200, kept=3, decided=1500)
    text = totals_table(
        Path("week.pcap"), {("block-25", "reject"): 1000, ("smarthost", "allow"): 500}, counts
    )
    assert text.splitlines() == [
        "week.pcap: 2,703 packets, 1,500 SYNs decided",
        "",
        "rule       verdict  connections",
        "block-25   reject         1,000",
        "smarthost  allow            500",
        "",
        "packets not decided:",
        "         1,200  not a SYN to a hooked port",
        "             3  a retransmitted SYN of an allowed connection (kept by the kernel)",
    ]


def test_differences_side_by_side() -> None:
    found = [
        Difference(decided(Verdict.REJECT, "submission"), decided(Verdict.ALLOW, "submission"))
    ]
    lines = differences(found, 10, "table").splitlines()
    assert lines[0].split() == ["time", "source", "destination", "port", "old", "rule", "old",
                                "verdict", "new", "rule", "new", "verdict"]  # fmt: skip
    assert lines[1].split() == ["2026-11-27T17:00:00.500000Z", "100.64.10.10", "198.51.100.25",
                                "587", "submission", "reject", "submission", "allow"]  # fmt: skip
    assert lines[-1] == "1 of 10 SYNs decided differently"
    assert differences([], 10, "table") == "no difference: all 10 SYNs decided alike\n"


def test_differences_as_json_lines() -> None:
    found = [Difference(decided(Verdict.REJECT, "a"), decided(Verdict.ALLOW, "b"))]
    [line] = differences(found, 1, "json").splitlines()
    assert json.loads(line) == {
        "@timestamp": "2026-11-27T17:00:00.500000Z",
        "packet": 7,
        "source": {"ip": "100.64.10.10", "port": 40312},
        "destination": {"ip": "198.51.100.25", "port": 587},
        "network": {"direction": "outbound"},
        "old": {"rule": "a", "verdict": "reject"},
        "new": {"rule": "b", "verdict": "allow"},
    }
    assert differences([], 1, "json") == ""
