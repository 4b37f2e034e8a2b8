"""Loading a policy aside: results, errors, coalesced requests, the loop's wake-up."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from portguard.core.errors import SourceError
from portguard.core.policy import RuleSet
from portguard.io.policyfiles import load_ruleset
from portguard.service.policyload import MAX_REPORTED_ERRORS, LoadResult, PolicyLoad, capped

GOOD = '[[rule]]\nid = "r"\naction = "allow"\n'


def wait(load: PolicyLoad, woken: threading.Event) -> LoadResult:
    assert woken.wait(10), "the loop was never woken"
    woken.clear()
    result = load.collect()
    assert result is not None
    return result


def test_a_good_load_and_a_bad_one(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(GOOD)
    woken = threading.Event()
    load = PolicyLoad(lambda: load_ruleset([rules]), woken.set)
    answers: list[dict[str, Any]] = []
    load.request(answers.append)
    result = wait(load, woken)
    assert isinstance(result.ruleset, RuleSet) and result.errors == []
    assert result.replies == [answers.append]
    rules.write_text('[[rule]]\nid = "r"\naction = "maybe"\n')
    load.request()
    bad = wait(load, woken)
    assert bad.ruleset is None and any(f"{rules}:3:" in e for e in bad.errors)
    assert load.collect() is None


def test_requests_during_a_load_get_the_next_load() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def slow() -> RuleSet:
        calls.append(1)
        gate.wait(10)
        raise SourceError(["x:1: nope"])

    woken = threading.Event()
    load = PolicyLoad(slow, woken.set)
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    load.request(first.append)
    load.request(second.append)  # arrives while the first load runs
    gate.set()
    one = wait(load, woken)
    assert one.replies == [first.append]
    two = wait(load, woken)
    assert two.replies == [second.append] and len(calls) == 2


def test_an_unexpected_exception_keeps_the_old_policy() -> None:
    def broken() -> RuleSet:
        raise KeyError("bug")

    woken = threading.Event()
    load = PolicyLoad(broken, woken.set)
    load.request()
    result = wait(load, woken)
    assert result.ruleset is None and "unexpected error" in result.errors[0]


def test_an_operator_request_overrides_a_waiting_resolve() -> None:
    gate = threading.Event()

    def slow() -> RuleSet:
        gate.wait(10)
        raise SourceError(["x:1: nope"])

    woken = threading.Event()
    load = PolicyLoad(slow, woken.set)
    load.request(reason="resolve")
    load.request(reason="resolve")  # waits
    load.request(reason="control")  # joins the waiting load and names it
    gate.set()
    assert wait(load, woken).reason == "resolve"
    assert wait(load, woken).reason == "control"


def test_parked_reload_replies_are_bounded() -> None:
    from portguard.service.policyload import BUSY, MAX_WAITING

    gate = threading.Event()

    def slow() -> RuleSet:
        gate.wait(10)
        raise SourceError(["x:1: nope"])

    woken = threading.Event()
    load = PolicyLoad(slow, woken.set)
    load.request()  # running: later requests park until it ends
    answers: list[dict[str, Any]] = []
    for _ in range(MAX_WAITING + 3):
        load.request(answers.append)
    assert answers == [{"ok": False, "errors": [BUSY]}] * 3  # refused at once, not parked
    gate.set()
    wait(load, woken)
    assert len(wait(load, woken).replies) == MAX_WAITING


def test_the_next_load_starts_only_after_the_result_was_applied() -> None:
    applied: list[str] = []
    seen: list[list[str]] = []

    def load_() -> RuleSet:
        seen.append(list(applied))  # what the load saw in force when it started
        raise SourceError(["x:1: nope"])

    woken = threading.Event()
    load = PolicyLoad(load_, woken.set)
    load.request()
    assert woken.wait(10)
    woken.clear()
    load.request()  # parked: the first result is not collected yet
    load.collect(lambda result: applied.append("first"))
    assert woken.wait(10)
    assert seen == [[], ["first"]]


def test_errors_are_capped_with_a_count_of_the_rest() -> None:
    assert capped(["a"]) == ["a"]
    many = [f"x:{n}: bad" for n in range(MAX_REPORTED_ERRORS + 5)]
    assert capped(many) == [*many[:MAX_REPORTED_ERRORS], "... and 5 more"]


def test_abandon_takes_every_reply_still_owed_once() -> None:
    gate = threading.Event()

    def slow() -> RuleSet:
        gate.wait(10)
        raise SourceError(["x:1: nope"])

    woken = threading.Event()
    load = PolicyLoad(slow, woken.set)
    running: list[dict[str, Any]] = []
    parked: list[dict[str, Any]] = []
    load.request(running.append)  # the running load's
    load.request(parked.append)  # waits for the next load
    assert load.abandon() == [running.append, parked.append]
    assert load.abandon() == []  # taken: nobody is answered twice
    gate.set()
    assert wait(load, woken).replies == []  # the load that finishes later answers nobody
    assert not load.running  # and the parked one never starts
    load.request(parked.append)
    assert woken.wait(10)
    assert load.abandon() == [parked.append]  # a finished, uncollected result's
    result = load.collect()
    assert result is not None and result.replies == [] and not load.running
