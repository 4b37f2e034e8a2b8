"""The worker's quarantine keeper: alerts logged and kept, state across restarts, the other
workers' files merged, expiry, the control requests, and the supervisor's merged answers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from portguard.core.detect.quarantine import entry
from portguard.core.events.record import Event, Observer
from portguard.core.gate import Gate
from portguard.io.policyfiles import load_ruleset
from portguard.service.quarantinestate import (
    QuarantineKeeper,
    forward,
    saved_quarantine,
    state_file,
)
from portguard.shipped import RULES_DIR
from tests.unit.test_gate import DETECT, MX, SUBSCRIBER, syn

OBSERVER = Observer("gw", "0")


def keeper(
    tmp_path: Path, queue: int = 0, workers: int = 1
) -> tuple[QuarantineKeeper, list[Event]]:
    rules = tmp_path / "rules"
    if not rules.exists():
        rules.mkdir()
        (rules / "10-isp.toml").write_text((RULES_DIR / "10-isp.toml").read_text())
        (rules / "lists").symlink_to(RULES_DIR / "lists")
        (rules / "20-detect.toml").write_text(DETECT)
    logged: list[Event] = []
    problems: list[str] = []
    gate = Gate(load_ruleset([rules]), OBSERVER)
    kept = QuarantineKeeper(gate, tmp_path / "state", queue, workers, OBSERVER, logged.append,
                            lambda action, message: problems.append(message))  # fmt: skip
    return kept, logged


def actions(logged: list[Event]) -> list[str]:
    return [event["event"]["action"] for event in logged]


def test_an_alert_is_logged_and_its_quarantine_kept_across_a_restart(tmp_path: Path) -> None:
    kept, logged = keeper(tmp_path)
    for n in range(3):
        kept.gate.handle(syn(SUBSCRIBER, MX + 10 + n, 25), False, True, 1e9 + n)
    kept.report()
    assert actions(logged) == ["fanout-detected", "quarantine-added"]
    assert state_file(tmp_path / "state", 0, 1).name == "quarantine.json"
    assert os.stat(tmp_path / "state" / "quarantine.json").st_mode & 0o777 == 0o600
    again, _ = keeper(tmp_path)
    again.load(1e9 + 10)
    assert again.gate.quarantine.refusal(4, SUBSCRIBER, 25, 1e9 + 10) is not None
    later, _ = keeper(tmp_path)
    later.load(1e9 + 3700)
    assert not later.gate.quarantine, "expired entries are dropped at start"


def test_expiry_is_logged_and_saved(tmp_path: Path) -> None:
    kept, logged = keeper(tmp_path)
    kept.control({"command": "quarantine-add", "address": "100.64.10.10", "for": "5s"})
    until = kept.gate.quarantine.entries[(4, SUBSCRIBER)].until
    kept.tick(until - 1)
    assert actions(logged) == ["quarantine-added"]
    kept.tick(until)
    assert actions(logged) == ["quarantine-added", "quarantine-expired"]
    assert orjson.loads((tmp_path / "state" / "quarantine.json").read_bytes())["sources"] == []


def test_control_add_list_release(tmp_path: Path) -> None:
    kept, logged = keeper(tmp_path)
    added = kept.control({"command": "quarantine-add", "address": "2001:db8:64:10::9",
                          "for": "1h", "ports": [25]})  # fmt: skip
    assert added["ok"] and added["quarantined"][0]["source"] == "2001:db8:64:10::/64"
    listed = kept.control({"command": "quarantine-list"})
    assert [item["source"] for item in listed["quarantined"]] == ["2001:db8:64:10::/64"]
    released = kept.control({"command": "quarantine-release", "address": "2001:db8:64:10::1"})
    assert [item["source"] for item in released["released"]] == ["2001:db8:64:10::/64"]
    assert kept.control({"command": "quarantine-release", "address": "100.64.10.10"}) == {
        "ok": True, "released": []}  # fmt: skip
    assert actions(logged) == ["quarantine-added", "quarantine-released"]
    assert logged[0]["portguard"]["quarantine"]["by"] == "control"
    bad = kept.control({"command": "quarantine-add", "address": "100.64.10.10", "for": "x"})
    assert bad["ok"] is False and bad["errors"]


def test_workers_merge_each_others_files_when_they_change(tmp_path: Path) -> None:
    one, _ = keeper(tmp_path, queue=0, workers=2)
    two, _ = keeper(tmp_path, queue=1, workers=2)
    assert one.gate.detection.workers == 2
    one.control({"command": "quarantine-add", "address": "100.64.10.10", "for": "1h"})
    assert (tmp_path / "state" / "quarantine-0.json").exists()
    two.tick(one.gate.quarantine.entries[(4, SUBSCRIBER)].since + 1)
    assert (4, SUBSCRIBER) in two.gate.quarantine.entries


def test_a_link_is_never_followed_and_a_broken_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "state" / "quarantine.json").symlink_to(tmp_path / "elsewhere.json")
    problems: list[str] = []
    kept, _ = keeper(tmp_path)
    kept.problem = lambda action, message: problems.append(message)
    kept.load(0.0)
    assert problems and "symbolic link" in problems[0]
    table, unreadable = saved_quarantine(tmp_path / "state", 0.0)
    assert not table and unreadable


def test_the_supervisor_merges_the_workers_answers() -> None:
    old = entry((4, SUBSCRIBER), "fanout", 0.0, 60.0, [25]).fields()
    new = entry((4, SUBSCRIBER), "manual", 5.0, 90.0, [25]).fields()
    answers: dict[str, dict[str, Any]] = {
        "w0": {"ok": True, "quarantined": [old]},
        "w1": {"ok": True, "quarantined": [new]},
        "w2": {"ok": False, "errors": ["the quarantine is full"]},
    }
    merged = forward([Path("w0"), Path("w1")], {"command": "quarantine-list"},
                     lambda path, request: answers[path.name])  # fmt: skip
    assert merged == {"ok": True, "quarantined": [new]}
    failed = forward([Path("w0"), Path("w2")], {"command": "quarantine-add"},
                     lambda path, request: answers[path.name])  # fmt: skip
    assert failed["ok"] is False and failed["errors"] == ["the quarantine is full"]
    released = forward([Path("w0")], {"command": "quarantine-release"},
                       lambda path, request: {"ok": True, "released": [old]})  # fmt: skip
    assert released == {"ok": True, "released": [old]}


def test_an_ended_quarantine_empties_the_deny_cache_at_once(tmp_path: Path) -> None:
    """Its refusals may sit in the kernel's deny cache: a release or an expiry rotates it."""
    kept, _ = keeper(tmp_path)
    rotations: list[str] = []
    kept.lifted = lambda: rotations.append("rotate")
    kept.control({"command": "quarantine-add", "address": "100.64.10.10", "for": "1h"})
    kept.control({"command": "quarantine-add", "address": "100.64.10.11", "for": "5s"})
    assert rotations == []  # a new quarantine only refuses more
    kept.control({"command": "quarantine-release", "address": "100.64.10.10"})
    assert rotations == ["rotate"]
    kept.control({"command": "quarantine-release", "address": "100.64.10.10"})  # not there
    assert rotations == ["rotate"]
    kept.tick(kept.gate.quarantine.entries[(4, SUBSCRIBER + 1)].until)
    assert rotations == ["rotate", "rotate"]
