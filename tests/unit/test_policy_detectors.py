"""[detect.NAME] tables: durations, source keys, compiled detectors and their errors at
path:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from portguard.core.policy import PolicyError, compile_ruleset
from portguard.core.policy.detectors import (
    key_text,
    parse_duration,
    parse_source,
    source_key,
)

GOOD = """
[detect.fanout]
dport = [25]
distinct = 20
window = "10m"
action = "quarantine"
quarantine = "1h"
quarantine_ports = [25, 465, 587]

[detect.watch]
dport = ["20-30"]
distinct = 5
window = "30s"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        compile_ruleset([(Path("d.toml"), text)], lambda _: "")
    return [problem.format() for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), (" 2d ", 172_800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10", "1w", "0s", "367d", 5, "1.5h"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_source_keys() -> None:
    assert parse_source("100.64.10.10") == source_key(4, 0x64400A0A)
    assert parse_source("2001:db8:64:10::99") == parse_source("2001:db8:64:10::/64")
    assert key_text(parse_source("2001:db8:64:10::1")) == "2001:db8:64:10::/64"
    for bad in ("100.64.0.0/10", "2001:db8::/48", "mail.example"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_detectors_compile_into_the_ruleset_with_their_defaults() -> None:
    ruleset = compile_ruleset([(Path("20-detect.toml"), GOOD)], lambda _: "")
    fanout, watch = ruleset.detectors
    assert (fanout.name, fanout.distinct, fanout.window, fanout.quarantine) == (
        "fanout", 20, 600, 3600)  # fmt: skip
    assert fanout.refused_ports == {25, 465, 587} and fanout.ruleset == "20-detect.toml"
    assert fanout.rule_id == "quarantine:fanout"
    assert (watch.action, watch.quarantine_ports.label) == ("alert", "20-30")
    assert watch.refused_ports == frozenset(range(20, 31))
    assert "within 30 s" in watch.describe() and "quarantine" in fanout.describe()


def test_errors_name_file_line_and_column() -> None:
    text = """
[detect.fanout]
dport = []
distinct = 1
window = "10x"
action = "block"
quarantine = "1h"
color = 3

[detect."bad name"]
dport = [25]
distinct = 5
window = "1m"
"""
    found = problems(text)
    assert "d.toml:3:1: dport: must not be an empty list (leave the key out to match any)" in found
    assert "d.toml:4:1: distinct: 1 is out of range 2-65536" in found
    assert any(p.startswith("d.toml:5:1: window:") for p in found)
    assert any(p.startswith("d.toml:6:1: action:") for p in found)
    assert any(p.startswith("d.toml:8:1:") and "color" in p for p in found)
    assert any(p.startswith("d.toml:10:1: detector name") for p in found)


def test_quarantine_keys_need_the_quarantine_action_and_names_are_unique() -> None:
    alert_only = '[detect.a]\ndport = [25]\ndistinct = 2\nwindow = "1m"\nquarantine_ports = [25]\n'
    assert problems(alert_only) == [
        'd.toml:5:1: quarantine_ports: applies only with action = "quarantine"'
    ]
    with pytest.raises(PolicyError) as caught:
        compile_ruleset([(Path("a.toml"), GOOD), (Path("b.toml"), GOOD)], lambda _: "")
    assert any("detector 'fanout' is already defined at a.toml:2" in p.format()
               for p in caught.value.problems)  # fmt: skip
