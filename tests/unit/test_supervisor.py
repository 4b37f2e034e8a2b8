"""The supervisor of forked workers without workers, root or sockets: its control server and
signal pipe are fakes, a worker's answer is a dict (or a fake `control_request`), and a dead
worker is a real child process that exited."""

from __future__ import annotations

import errno
import os
import selectors
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portguard.config.model import parse_config
from portguard.core.errors import PolicyError
from portguard.core.events.record import Observer
from portguard.core.policy import RuleSet
from portguard.io.policyfiles import load_ruleset
from portguard.service import supervisor as supervisor_module
from portguard.service.control import ControlStats
from portguard.service.policyload import LoadResult, PolicyLoad, Reply
from portguard.service.status import DaemonFacts, log_section
from portguard.service.supervisor import (
    ADOPT_TIMEOUT,
    MAX_HANDOVERS,
    MAX_STATUS_THREADS,
    WORKER_STATUS_TIMEOUT,
    Handover,
    Supervisor,
    handover_answer,
)

RULES = (
    '[sets.relays]\nhosts = ["relay.example"]\n'
    '[[rule]]\nid = "relay"\ndst = "relays"\naction = "allow"\n'
)


class FakeControl:
    """Stands in for ControlServer: no socket."""

    def __init__(self, path: Path, on_control: object, on_problem: object = None) -> None:
        self.path = path
        self.stats = ControlStats()

    def register(self, selector: selectors.BaseSelector) -> None:
        return None

    def sweep(self, now: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None


class FakeSignals:
    """Stands in for SignalPipe: installs no handler; `woken` is set by a finished job."""

    def __init__(self) -> None:
        self.stop = False
        self.woken = threading.Event()

    def wake(self) -> None:
        self.woken.set()

    def take_reload(self) -> bool:
        return False

    def take_reopen(self) -> bool:
        return False

    def close(self) -> None:
        return None


class Events:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> bool:
        self.seen.append(event)
        return True

    def actions(self) -> list[str]:
        return [e["event"]["action"] for e in self.seen]

    def stats(self) -> list[Any]:  # the parent's own outputs' counters (status): none here
        return []


class Answers:
    """Replies of control clients, in order."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, answer: dict[str, Any]) -> None:
        self.seen.append(answer)


def load(path: Path, *addresses: str) -> RuleSet:
    return load_ruleset([path], resolve=lambda name: list(addresses))


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


@pytest.fixture
def make(tmp_path: Path, rules: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Supervisor]:
    """A Supervisor of ``workers`` queues from ``num``, its run-time directory tmp/run."""
    monkeypatch.setattr(supervisor_module, "ControlServer", FakeControl)
    monkeypatch.setattr(supervisor_module, "SignalPipe", FakeSignals)

    def build(workers: int = 2, num: int = 0, ruleset: RuleSet | None = None) -> Supervisor:
        text = (
            f'[queue]\nnum = {num}\nworkers = {workers}\n[rules]\npaths = ["{rules}"]\n'
            f'[daemon]\ncontrol_socket = "{tmp_path}/run/control.sock"\n'
            f'state_dir = "{tmp_path}/state"\n'
        )
        config = parse_config(text, tmp_path / "portguard.toml")
        facts = DaemonFacts(1.0, 7, "closed", tuple(config.queue.numbers),
                            config.daemon.control_socket)  # fmt: skip
        running = Supervisor(
            config, ruleset or load(rules, "192.0.2.1"), facts, Observer("gw", "0")
        )
        running.writer = Events()  # type: ignore[assignment]
        return running

    return build


def events(running: Supervisor) -> Events:
    assert isinstance(running.writer, Events)
    return running.writer


def handover(ruleset: RuleSet, path: Path, replies: list[Reply] | None = None) -> Handover:
    return Handover(ruleset, path, "control", replies if replies is not None else [])


# --- handover_answer --------------------------------------------------------------------------


def test_every_worker_on_the_handed_over_version_is_a_good_reload(rules: Path) -> None:
    new = load(rules, "192.0.2.9")
    done = handover(new, rules)
    done.answers = {1: {"ok": True, "policy_version": new.version},
                    0: {"ok": True, "policy_version": new.version}}  # fmt: skip
    assert handover_answer(done) == {
        "ok": True,
        "policy_version": new.version,
        "rules": 1,
        "workers": [
            {"queue": 0, "ok": True, "policy_version": new.version},
            {"queue": 1, "ok": True, "policy_version": new.version},
        ],
    }


def test_a_worker_on_another_version_fails_the_reload(rules: Path) -> None:
    old, new = load(rules, "192.0.2.1"), load(rules, "192.0.2.9")
    assert old.version != new.version
    done = handover(new, rules)
    done.answers = {0: {"ok": True, "policy_version": new.version},
                    1: {"ok": True, "policy_version": old.version}}  # fmt: skip
    answer = handover_answer(done)
    assert answer["ok"] is False
    assert answer["workers"][1] == {"queue": 1, "ok": False, "policy_version": old.version}
    assert answer["errors"] == [
        f"worker on queue 1 runs policy {old.version}, not the handed-over {new.version}"
    ]
    done.answers[1] = {"ok": True}  # no version at all: no proof it runs the new one
    assert handover_answer(done)["ok"] is False


def test_a_newer_version_handed_over_meanwhile_is_a_good_answer(rules: Path) -> None:
    new, newer = load(rules, "192.0.2.9"), load(rules, "192.0.2.10")
    done = handover(new, rules)
    done.newer.add(newer.version)
    done.answers = {0: {"ok": True, "policy_version": newer.version},
                    1: {"ok": True, "policy_version": new.version}}  # fmt: skip
    assert handover_answer(done)["ok"] is True


def test_a_failed_worker_passes_its_errors_on(rules: Path) -> None:
    new = load(rules, "192.0.2.9")
    done = handover(new, rules)
    done.answers = {0: {"ok": False, "errors": ["worker of queue 0: timed out"]},
                    1: {"ok": True, "policy_version": new.version}}  # fmt: skip
    answer = handover_answer(done)
    assert answer["ok"] is False and answer["errors"] == ["worker of queue 0: timed out"]
    assert [w["ok"] for w in answer["workers"]] == [False, True]
    done.answers[0] = {"ok": False}
    assert handover_answer(done)["errors"] == ["a worker did not take the new policy"]


# --- the loop: built policies, the workers' answers -----------------------------------------


def test_the_reload_is_answered_once_every_worker_answered(
    make: Callable[..., Supervisor], rules: Path, tmp_path: Path
) -> None:
    running = make(workers=2, num=4)
    new = load(rules, "192.0.2.9")
    file = tmp_path / "policy-x.pickle"
    file.write_bytes(b"")
    answers = Answers()
    pending = handover(new, file, [answers])
    running.handovers.append(pending)
    running._adopted.put((pending, 5, {"ok": True, "policy_version": new.version}))
    running._collect_adopted()
    assert answers.seen == [] and running.handovers == [pending]  # one of two answered
    running._adopted.put((pending, 4, {"ok": True, "policy_version": new.version}))
    running._collect_adopted()
    assert [a["ok"] for a in answers.seen] == [True]
    assert [w["queue"] for w in answers.seen[0]["workers"]] == [4, 5]
    assert running.handovers == [] and not file.exists()  # every build its own file


def test_handing_over_asks_every_worker_and_marks_earlier_builds(
    make: Callable[..., Supervisor], rules: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = make(workers=2)
    new = load(rules, "192.0.2.9")
    asked: list[tuple[str, str, float, dict[str, Any]]] = []
    lock = threading.Lock()

    def fake_request(path: Path, command: str, timeout: float, **fields: Any) -> dict[str, Any]:
        with lock:
            asked.append((path.name, command, timeout, fields))
        return {"ok": True, "policy_version": new.version}

    monkeypatch.setattr(supervisor_module, "control_request", fake_request)
    earlier = handover(load(rules, "192.0.2.5"), tmp_path / "policy-a.pickle")
    running.handovers.append(earlier)
    answers = Answers()
    running._hand_over(Handover(new, tmp_path / "policy-b.pickle", "sighup", [answers]))
    assert earlier.newer == {new.version}  # its workers may answer with this one
    for _ in range(500):
        running._collect_adopted()
        if answers.seen:
            break
        running.signals.woken.wait(0.01)  # type: ignore[attr-defined]
    assert [a["ok"] for a in answers.seen] == [True]
    fields = {"file": str(tmp_path / "policy-b.pickle"), "trigger": "sighup"}
    assert sorted(asked) == [("control.sock.0", "adopt", ADOPT_TIMEOUT, fields),
                             ("control.sock.1", "adopt", ADOPT_TIMEOUT, fields)]  # fmt: skip


def test_a_worker_that_does_not_answer_in_time_fails_its_queue(
    make: Callable[..., Supervisor], rules: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = make(workers=2)

    def slow(path: Path, command: str, timeout: float, **fields: Any) -> dict[str, Any]:
        raise TimeoutError("timed out")

    monkeypatch.setattr(supervisor_module, "control_request", slow)
    pending = handover(load(rules, "192.0.2.9"), tmp_path / "policy-b.pickle")
    running._adopt(pending, 1)
    assert running._adopted.get_nowait() == (
        pending,
        1,
        {"ok": False, "errors": ["worker of queue 1: timed out"]},
    )
    assert running.signals.woken.is_set()  # type: ignore[attr-defined]
    assert running._timeout() == 0.2  # without systemd's watchdog: the loop's longest wait


def test_a_refused_build_is_answered_at_once_and_logged(make: Callable[..., Supervisor]) -> None:
    running = make()
    before = running.policy
    answers = Answers()
    running._reloaded(LoadResult(None, ["/r/a.toml:3: bad"], [answers], "control"))
    assert answers.seen == [
        {"ok": False, "errors": ["/r/a.toml:3: bad"], "policy_version": before.version}
    ]
    assert running.policy is before and events(running).actions() == ["reload-failed"]


def test_a_timed_resolve_with_the_same_addresses_is_discarded(
    make: Callable[..., Supervisor], rules: Path, tmp_path: Path
) -> None:
    running = make()
    before = running.policy
    file = tmp_path / "policy-same.pickle"
    file.write_bytes(b"")
    running._built = file
    answers = Answers()
    running._reloaded(LoadResult(load(rules, "192.0.2.1"), [], [answers], "resolve"))
    assert answers.seen == [{"ok": True, "policy_version": before.version}]
    assert running.policy is before and running.handovers == [] and not file.exists()


def test_a_build_beyond_the_handovers_in_flight_waits_its_turn(
    make: Callable[..., Supervisor], rules: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = make()
    started: list[Handover] = []
    monkeypatch.setattr(running, "_hand_over", started.append)
    stuck = [handover(running.policy, tmp_path / f"p{n}") for n in range(MAX_HANDOVERS)]
    running.handovers.extend(stuck)
    new = load(rules, "192.0.2.9")
    running._built = tmp_path / "policy-new.pickle"
    answers = Answers()
    running._reloaded(LoadResult(new, [], [answers], "control"))
    assert answers.seen == [{"ok": False, "policy_version": running.policy.version,
                             "errors": ["workers are still loading earlier policies"]}]  # fmt: skip
    assert running.policy is not new and started == []
    running.handovers.clear()
    running._built = tmp_path / "policy-new.pickle"
    running._reloaded(LoadResult(new, [], [answers], "control"))
    assert running.policy is new and [h.ruleset for h in started] == [new]


# --- the load thread -----------------------------------------------------------------------


def test_the_load_writes_the_handover_and_keeps_the_resolution(
    make: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    running = make()
    monkeypatch.setattr("portguard.io.policyfiles.resolve_host", lambda name: ["192.0.2.7"])
    built = running._load()
    assert built.resolved == {"relay.example": ("192.0.2.7",)}
    assert running._built is not None and running._built.parent == tmp_path / "run"
    assert (tmp_path / "state" / "resolved.json").exists()


def test_a_handover_that_cannot_be_written_refuses_the_reload(
    make: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    running = make()
    before = running.policy
    monkeypatch.setattr("portguard.io.policyfiles.resolve_host", lambda name: ["192.0.2.7"])

    def full(directory: Path, ruleset: RuleSet) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "x.tmp"))

    monkeypatch.setattr(supervisor_module, "write_handover", full)
    expected = f"{tmp_path}/run: cannot write the policy for the workers: No space left on device"
    with pytest.raises(PolicyError) as refused:
        running._load()
    assert refused.value.messages == [expected]
    answers = Answers()
    running.loads.request(answers, reason="control")  # the real path: refused, not a crash
    assert running.signals.woken.wait(10)  # type: ignore[attr-defined]
    running.loads.collect(running._reloaded)
    assert answers.seen == [{"ok": False, "errors": [expected], "policy_version": before.version}]
    assert running.policy is before and events(running).actions() == ["reload-failed"]


# --- a worker that dies ----------------------------------------------------------------------


def test_a_dead_worker_answers_the_waiting_reloads_before_the_exit(
    make: Callable[..., Supervisor], rules: Path, tmp_path: Path
) -> None:
    running = make(workers=2, num=4)
    in_handover, in_load = Answers(), Answers()
    running.handovers.append(handover(load(rules, "192.0.2.9"), tmp_path / "p", [in_handover]))
    release = threading.Event()

    def slow_build() -> RuleSet:
        release.wait(10)
        return running.policy

    running.loads = PolicyLoad(slow_build, lambda: None)
    running.loads.request(in_load, reason="control")  # a build still running
    live = os.posix_spawn("/bin/sleep", ["sleep", "30"], os.environ)
    dead = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ)
    try:
        os.waitid(os.P_PID, dead, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        running.children = [live, dead]  # forked in queue order: queue 4, then queue 5
        with selectors.DefaultSelector() as selector:
            assert running._watch(selector) == 1
    finally:
        release.set()
        os.kill(live, 9)
        os.waitpid(live, 0)
    gone = {"ok": False, "errors": ["worker on queue 5 exited"]}
    assert in_handover.seen == [gone] and in_load.seen == [gone]
    assert running.children == [live]


# --- on_control, status ---------------------------------------------------------------------


def section(queue: int, packets: int, hits: int) -> dict[str, Any]:
    """One worker's `status` section, as worker_section builds it."""
    return {
        "queue": queue,
        "pid": 100 + queue,
        "policy": {"version": "v1", "loaded_at": 10.0, "rules": [["relay", "allow"],
                                                                 ["default", "deny"]]},
        "hits": [["relay", "allow", hits]],
        "recent_drops": 1,
        "malformed": 0,
        "limit_table_full": {},
        "packets": packets,
        "packet_errors": 0,
        "log": log_section({}, 0),
    }  # fmt: skip


def test_status_sums_the_workers_and_names_the_silent_one(
    make: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = make(workers=3)
    asked: list[tuple[str, float]] = []

    def fake_request(path: Path, command: str, timeout: float, **fields: Any) -> dict[str, Any]:
        asked.append((path.name, timeout))
        queue = int(path.name.rsplit(".", 1)[1])
        if queue == 2:
            raise TimeoutError("timed out")
        return {"ok": True, "worker": section(queue, packets=10 * (queue + 1), hits=queue + 1)}

    monkeypatch.setattr(supervisor_module, "control_request", fake_request)
    answers = Answers()
    assert running._status_slots.acquire(blocking=False)  # as _start_status does
    running._answer_status(answers)
    document = answers.seen[0]
    assert asked == [(f"control.sock.{q}", WORKER_STATUS_TIMEOUT) for q in (0, 1, 2)]
    assert document["packets"] == 30 and document["recent_drops"] == 2
    assert document["decisions"]["total"] == 3
    assert document["daemon"]["workers"] == 3 and document["daemon"]["workers_answering"] == 2
    assert document["errors"] == ["worker on queue 2 did not answer: timed out"]
    assert document["control"] == ControlStats().fields()
    for _ in range(MAX_STATUS_THREADS):  # the slot was given back
        assert running._status_slots.acquire(blocking=False)


def test_a_status_that_fails_is_still_answered(
    make: Callable[..., Supervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = make(workers=1)
    garbled = {"ok": True, "worker": {"queue": 0}}  # no counters
    monkeypatch.setattr(supervisor_module, "control_request", lambda *a, **k: garbled)
    answers = Answers()
    assert running._status_slots.acquire(blocking=False)
    running._answer_status(answers)
    assert answers.seen[0]["ok"] is False
    assert answers.seen[0]["errors"][0].startswith("status failed: KeyError")
    for _ in range(MAX_STATUS_THREADS):
        assert running._status_slots.acquire(blocking=False)


def test_control_requests(make: Callable[..., Supervisor]) -> None:
    running = make()
    answers = Answers()
    for _ in range(MAX_STATUS_THREADS):
        assert running._status_slots.acquire(blocking=False)
    running.on_control({"command": "status"}, answers)  # every slot taken
    running.on_control({"command": "adopt"}, answers)  # a worker's command, not the parent's
    assert answers.seen == [
        {"ok": False, "errors": ["status requests are being answered; try again"]},
        {"ok": False, "errors": ["unknown command 'adopt'"]},
    ]
