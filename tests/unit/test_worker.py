"""The worker's reload decisions (no kernel: apply_load on results built from real files)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from portguard.config.model import parse_config
from portguard.core.events.record import Observer
from portguard.core.policy import RuleSet
from portguard.io.policyfiles import load_ruleset
from portguard.service.policyload import MAX_REPORTED_ERRORS, LoadResult
from portguard.service.worker import Worker

RULES = (
    '[sets.relays]\nhosts = ["relay.example"]\n'
    '[[rule]]\nid = "relay"\ndst = "relays"\naction = "allow"\n'
)


class Events:
    due = float("inf")  # the log process's hand-over: nothing waiting to be sent

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> bool:
        self.seen.append(event)
        return True

    def add(self, event: dict[str, Any]) -> None:  # the packet loop's hand-over
        self.seen.append(event)

    def flush(self) -> None:
        pass

    def flush_if_due(self, now: float) -> None:
        pass

    def actions(self) -> list[str]:
        return [e["event"]["action"] for e in self.seen]


def load(path: Path, *addresses: str) -> RuleSet:
    return load_ruleset([path], resolve=lambda name: list(addresses))


def worker(tmp_path: Path, ruleset: RuleSet) -> tuple[Worker, Events]:
    config = parse_config(f'[rules]\npaths = ["{tmp_path}"]\n', tmp_path / "portguard.toml")
    running = Worker(config, 0, ruleset, Observer("gw", "0"))
    events = Events()
    running.writer = events  # type: ignore[assignment]
    return running, events


def test_a_timed_resolve_applies_new_addresses_only(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    first = load(rules, "192.0.2.1", "192.0.2.2")
    running, events = worker(tmp_path, first)
    reordered = load(rules, "192.0.2.2", "192.0.2.1")  # round-robin DNS: same addresses
    running.apply_load(LoadResult(reordered, [], [], "resolve"))
    assert running.gate.ruleset is reordered and events.actions() == []
    moved = load(rules, "192.0.2.9")
    running.apply_load(LoadResult(moved, [], [], "resolve"))
    assert running.gate.ruleset is moved and events.actions() == ["reload"]


def test_a_timed_resolve_never_applies_unreviewed_edits(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    first = load(rules, "192.0.2.1")
    running, events = worker(tmp_path, first)
    rules.write_text(RULES.replace('"allow"', '"reject"'))  # edited, not yet reloaded
    edited = load(rules, "192.0.2.1")
    running.apply_load(LoadResult(edited, [], [], "resolve"))
    assert running.gate.ruleset is first and events.actions() == ["reload-warning"]
    answers: list[dict[str, Any]] = []
    running.apply_load(LoadResult(edited, [], [answers.append], "control"))  # the operator's
    assert running.gate.ruleset is edited and answers[0]["ok"] is True


def test_a_failed_load_keeps_the_policy_and_caps_the_errors(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    first = load(rules, "192.0.2.1")
    running, events = worker(tmp_path, first)
    answers: list[dict[str, Any]] = []
    errors = [f"x:{n}:1: bad" for n in range(1, 5001)]
    running.apply_load(LoadResult(None, errors, [answers.append], "control"))
    assert running.gate.ruleset is first
    assert answers[0]["ok"] is False and len(answers[0]["errors"]) == MAX_REPORTED_ERRORS + 1
    assert events.seen[0]["portguard"]["errors"][-1] == "... and 4900 more"


# --- the loop under a flood ------------------------------------------------------------------


class FloodedReader:
    """A queue that is always readable and always has more (a saturating flood)."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.write(self._w, b"x")  # readable forever: nobody reads the pipe
        self.batches = 0

    def fileno(self) -> int:
        return self._r

    def read(self) -> bool:
        self.batches += 1
        return True  # the batch was full

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class CountingSignals:
    """Stops the loop after `rounds` housekeeping rounds; never readable itself."""

    def __init__(self, rounds: int) -> None:
        self._r, self._w = os.pipe()
        self.rounds, self.stop = rounds, False

    def fileno(self) -> int:
        return self._r

    def drain(self) -> None:
        pass


def test_the_loop_does_its_housekeeping_between_batches_of_a_flood(tmp_path: Path) -> None:
    running, _events = worker(tmp_path, load_rules(tmp_path))
    reader, signals = FloodedReader(), CountingSignals(rounds=50)
    between: list[int] = []

    def housekeeping(sig: Any, jobs: Any) -> None:
        between.append(reader.batches)
        signals.stop = len(between) >= signals.rounds

    running._between_packets = housekeeping  # type: ignore[method-assign]
    try:
        running._loop(reader, signals, None)  # type: ignore[arg-type]
    finally:
        reader.close()
    # batches, then the housekeeping (at most CHORES seconds apart), again and again: the
    # flood never starves it
    assert len(between) == 50 and between[0] >= 1
    assert all(later > earlier for earlier, later in itertools.pairwise(between))


def test_the_periodic_jobs_are_the_tick_the_interface_refresh_and_the_resolve(
    tmp_path: Path,
) -> None:
    running, _events = worker(tmp_path, load_rules(tmp_path))
    interval = running.config.rules.resolve_interval
    jobs = running._periodic_jobs(object(), 100.0)  # type: ignore[arg-type]
    assert [job.due for job in jobs] == [101.0, 130.0, 100.0 + interval]
    config = parse_config("[rules]\nresolve_interval = 0\n", tmp_path / "portguard.toml")
    unresolved = Worker(config, 0, load_rules(tmp_path), Observer("gw", "0"))
    assert len(unresolved._periodic_jobs(object(), 100.0)) == 2  # type: ignore[arg-type]


def load_rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "10.toml"
    path.write_text('[[rule]]\nid = "any"\naction = "allow"\n')
    return load_ruleset([path])


def test_a_forked_worker_adopts_only_handover_files_of_its_runtime_directory(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    config = parse_config(f'[rules]\npaths = ["{tmp_path}"]\n', tmp_path / "portguard.toml")
    running = Worker(config, 0, load(rules, "192.0.2.1"), Observer("gw", "0"),
                     control=tmp_path / "control.sock.0")  # fmt: skip
    running.private_control = True
    answers: list[dict[str, Any]] = []
    for file in (str(rules), "/var/log/portguard/decisions.json", 7):
        running.on_control({"command": "adopt", "file": file}, answers.append)
    assert [a["ok"] for a in answers] == [False, False, False]
    assert "hand-over file" in answers[0]["errors"][0]


def test_a_load_that_found_no_newer_handover_keeps_the_policy_quietly(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    first = load(rules, "192.0.2.1")
    running, events = worker(tmp_path, first)
    answers: list[dict[str, Any]] = []
    running.apply_load(LoadResult(first, [], [answers.append], "control"))
    assert answers == [{"ok": True, "policy_version": first.version, "rules": 1}]
    assert events.actions() == []
