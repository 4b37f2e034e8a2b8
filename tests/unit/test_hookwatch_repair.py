"""The hook watch with fake backends: the repair decision, one check, and the thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from portguard.io.hooks.backend import HookError, HookSpec, HookStatus
from portguard.io.hooks.iptables import IptablesBackend, chain_rules
from portguard.io.hooks.runner import CommandResult
from portguard.io.hooks.watch import HookWatch, error_text, repair_reason

SPEC = HookSpec(queue_num=0, workers=1, ports=(25, 465, 587), chains=("forward",), fail_open=False)
INTACT = HookStatus("fake", installed=True, complete=True, detail="fake: all there", rule_sets=1)
MISSING = HookStatus("fake", False, False, "fake: nothing installed", 0)


class FakeBackend:
    """Reports ``state``; ``install`` makes it ``repaired``. ``fail`` makes status raise."""

    name = "fake"

    def __init__(self, state: HookStatus = INTACT, repaired: HookStatus = INTACT) -> None:
        self.state = state
        self.repaired = repaired
        self.fail: Exception | None = None
        self.installs = 0
        self.specs: list[HookSpec | None] = []
        self.install_gate: threading.Event | None = None  # install waits for it when set
        self.installing = threading.Event()

    def render(self, spec: HookSpec) -> str:
        return ""

    def install(self, spec: HookSpec) -> None:
        self.installing.set()
        if self.install_gate is not None:
            self.install_gate.wait(5)
        self.installs += 1
        self.state = self.repaired

    def remove(self) -> None:
        self.state = MISSING

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        self.specs.append(spec)
        if self.fail is not None:
            raise self.fail
        return self.state


class Recorder:
    def __init__(self) -> None:
        self.repairs: list[str] = []
        self.errors: list[str] = []
        self.repaired = threading.Event()

    def repair(self, reason: str) -> None:
        self.repairs.append(reason)
        self.repaired.set()

    def error(self, message: str) -> None:
        self.errors.append(message)


def watch_of(backend: FakeBackend, interval: float = 10.0) -> tuple[HookWatch, Recorder]:
    seen = Recorder()
    return HookWatch(backend, SPEC, seen.repair, interval, seen.error), seen


def wait_until(condition: threading.Event, timeout: float = 3.0) -> None:
    assert condition.wait(timeout), "timed out"


# --- the decision -------------------------------------------------------------------------------


def test_an_intact_hook_needs_no_repair() -> None:
    assert repair_reason(INTACT) is None


def test_a_missing_hook_is_named_with_the_backends_detail() -> None:
    status = HookStatus("iptables", False, False, "iptables: nothing installed\nip6tables: x", 0)
    assert repair_reason(status) == "missing: iptables: nothing installed; ip6tables: x"


def test_duplicates_count_before_other_problems() -> None:
    status = HookStatus("fake", True, False, "fake: 2 jumps from FORWARD, one expected", 2)
    assert repair_reason(status) == "duplicated: fake: 2 jumps from FORWARD, one expected"


def test_an_incomplete_hook_is_altered() -> None:
    status = HookStatus("fake", True, False, "fake: chain (3 rules)\n\n  fake: rules differ\n", 1)
    assert repair_reason(status) == "altered: fake: chain (3 rules); fake: rules differ"


class ListingRunner:
    """``iptables -S`` answers the same listing for both families."""

    def __init__(self, listing: str) -> None:
        self.listing = listing

    def __call__(self, argv: Sequence[str], stdin: str | None) -> CommandResult:
        return CommandResult(tuple(argv), 0, self.listing, "")


def iptables_listing(forward: Sequence[str]) -> str:
    return "\n".join(["-P FORWARD ACCEPT", "-N PORTGUARD", *forward, *chain_rules(SPEC), ""])


def test_iptables_in_place_needs_no_repair() -> None:
    listing = iptables_listing(["-A FORWARD -p tcp -j PORTGUARD", "-A FORWARD -j ACCEPT"])
    assert repair_reason(IptablesBackend(ListingRunner(listing)).status(SPEC)) is None


def test_iptables_a_rule_above_the_jump_needs_repair() -> None:
    listing = iptables_listing(["-A FORWARD -p tcp -j ACCEPT", "-A FORWARD -p tcp -j PORTGUARD"])
    reason = repair_reason(IptablesBackend(ListingRunner(listing)).status(SPEC))
    assert reason is not None and reason.startswith("altered: ")
    assert "iptables: FORWARD does not begin with the jump to PORTGUARD" in reason
    assert "ip6tables: FORWARD does not begin with the jump to PORTGUARD" in reason


def test_iptables_flushed_rules_and_duplicate_jumps_need_repair() -> None:
    flushed = "-P FORWARD ACCEPT\n-N PORTGUARD\n"
    reason = repair_reason(IptablesBackend(ListingRunner(flushed)).status(SPEC))
    assert reason is not None and "0 jumps from FORWARD, one expected" in reason
    twice = iptables_listing(["-A FORWARD -p tcp -j PORTGUARD"] * 2)
    reason = repair_reason(IptablesBackend(ListingRunner(twice)).status(SPEC))
    assert reason is not None and reason.startswith("duplicated: ")


def test_error_text_keeps_a_hook_error_and_names_other_types() -> None:
    assert error_text(HookError("iptables -S failed (exit 4): locked")) == (
        "iptables -S failed (exit 4): locked"
    )
    assert error_text(RuntimeError("boom")) == "RuntimeError: boom"


# --- one check ----------------------------------------------------------------------------------


def test_check_leaves_an_intact_hook_alone() -> None:
    backend = FakeBackend(INTACT)
    watch, seen = watch_of(backend)
    assert watch.check() is None
    assert (backend.installs, seen.repairs, seen.errors) == (0, [], [])
    assert backend.specs == [SPEC]  # asked with the spec: order and rules are compared


def test_check_reinstalls_a_missing_hook_and_reports_why() -> None:
    backend = FakeBackend(MISSING)
    watch, seen = watch_of(backend)
    assert watch.check() == "missing: fake: nothing installed"
    assert backend.installs == 1 and backend.state == INTACT
    assert (seen.repairs, seen.errors) == (["missing: fake: nothing installed"], [])
    assert watch.check() is None and backend.installs == 1


def test_each_distinct_error_is_reported_once_until_a_check_succeeds() -> None:
    backend = FakeBackend(INTACT)
    watch, seen = watch_of(backend)
    backend.fail = HookError("iptables -w -S failed (exit 4): locked")
    for _ in range(3):
        assert watch.check() is None
    backend.fail = RuntimeError("surprise")
    watch.check()
    watch.check()
    assert seen.errors == ["iptables -w -S failed (exit 4): locked", "RuntimeError: surprise"]
    backend.fail = None
    assert watch.check() is None  # a good check clears the record: the next outage is news
    backend.fail = RuntimeError("surprise")
    watch.check()
    assert seen.errors[-1] == "RuntimeError: surprise" and len(seen.errors) == 3


def test_a_failing_install_is_reported_and_retried() -> None:
    backend = FakeBackend(MISSING)
    watch, seen = watch_of(backend)

    def refuse(spec: HookSpec) -> None:
        raise HookError("iptables-restore failed (exit 1): no")

    backend.install = refuse  # type: ignore[method-assign]
    assert watch.check() is None
    assert (seen.repairs, seen.errors) == ([], ["iptables-restore failed (exit 1): no"])
    del backend.install  # the class's install again
    assert watch.check() == "missing: fake: nothing installed"
    assert seen.repairs == ["missing: fake: nothing installed"]


def test_a_repair_that_does_not_take_is_retried_without_an_event_per_check() -> None:
    altered = HookStatus("fake", True, False, "fake: rules differ", 1)
    backend = FakeBackend(altered, repaired=altered)  # the status stays wrong after install
    watch, seen = watch_of(backend)
    for _ in range(4):
        assert watch.check() is None
    assert backend.installs == 4  # still tried every time
    assert seen.repairs == ["altered: fake: rules differ"]
    assert seen.errors == ["fake hooks still altered: fake: rules differ after a repair"]
    backend.repaired = INTACT  # now it takes: that repair is reported
    assert watch.check() == "altered: fake: rules differ"
    assert seen.repairs == ["altered: fake: rules differ"] * 2


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        HookWatch(FakeBackend(), SPEC, print, 0)


# --- the thread ---------------------------------------------------------------------------------


def test_the_thread_repairs_within_an_interval_and_survives_errors() -> None:
    backend = FakeBackend(INTACT)
    watch, seen = watch_of(backend, interval=0.02)
    backend.fail = HookError("nft list table failed (exit 1): busy")
    watch.start()
    try:
        deadline = time.monotonic() + 3
        while not seen.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        backend.fail = None
        backend.state = MISSING  # another tool flushed the rules
        wait_until(seen.repaired)
    finally:
        watch.stop()
    assert seen.errors == ["nft list table failed (exit 1): busy"]
    assert seen.repairs == ["missing: fake: nothing installed"]


def test_stop_returns_at_once_between_checks() -> None:
    watch, _ = watch_of(FakeBackend(), interval=30.0)
    watch.start()
    started = time.monotonic()
    watch.stop()
    assert time.monotonic() - started < 1.0
    assert not watch._thread.is_alive()


def test_stop_waits_for_a_running_repair_and_no_install_follows() -> None:
    backend = FakeBackend(MISSING)
    backend.install_gate = threading.Event()
    watch, seen = watch_of(backend, interval=0.01)
    watch.start()
    wait_until(backend.installing)  # a repair is under way, blocked inside install
    stopper = threading.Thread(target=watch.stop)
    stopper.start()
    time.sleep(0.2)
    assert stopper.is_alive(), "stop returned while an install was running"
    backend.install_gate.set()
    stopper.join(3)
    assert not stopper.is_alive() and not watch._thread.is_alive()
    assert backend.installs == 1 and len(seen.repairs) == 1  # finished before stop returned
    backend.remove()  # what the daemon does right after stopping the watch
    time.sleep(0.1)  # ten intervals
    assert backend.installs == 1 and backend.state == MISSING
    assert watch.check() is None and backend.installs == 1
