"""The deny cache's rotation thread (service/denycache.py) against a fake kernel cache: one
worker rotates, reads and flushes; with peers the first flushes only what every worker read."""

from __future__ import annotations

import time
from pathlib import Path

from portguard.core.denycache import CacheKey
from portguard.core.events.record import DecisionRecord
from portguard.core.gate import Outcome, Verdict
from portguard.io.hooks.backend import HookError
from portguard.service.denycache import CacheRotation, Generation, Peers, WorkerCache

KEY: CacheKey = (4, 0x64400A0A, 0xC6336419, 25)


class FakeSets:
    """Two generations in memory; `answer(key, n)` is the kernel answering n SYNs."""

    def __init__(self) -> None:
        self.generations: list[dict[CacheKey, int]] = [{}, {}]
        self.active = 0
        self.calls: list[str] = []
        self.fail = False

    def answer(self, key: CacheKey, count: int) -> None:
        gen = self.generations[self.active]
        gen[key] = gen.get(key, 0) + count

    def rotate(self) -> None:
        if self.fail:
            raise HookError("ipset restore failed (exit 1): set portguard-r4 missing")
        self.calls.append("rotate")
        assert not self.generations[1 - self.active], "rotated onto an unflushed generation"
        self.active = 1 - self.active

    def read_frozen(self) -> dict[CacheKey, int]:
        self.calls.append("read")
        return dict(self.generations[1 - self.active])

    def flush_frozen(self) -> None:
        self.calls.append("flush")
        self.generations[1 - self.active] = {}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_worker_rotates_reads_and_flushes_in_that_order() -> None:
    sets, clock = FakeSets(), Clock()
    rotation = CacheRotation(sets, 10.0, print, clock=clock)
    sets.answer(KEY, 5)
    clock.now = 1010.0
    assert rotation._guarded(rotation._rotate)
    [generation] = rotation.results()
    assert generation == Generation(1, 1000.0, 1010.0, {KEY: 5})
    assert sets.calls == ["rotate", "read", "flush"]


def test_a_failure_is_reported_once_until_a_step_succeeds() -> None:
    sets, errors = FakeSets(), list[str]()
    rotation = CacheRotation(sets, 10.0, errors.append)
    sets.fail = True
    assert not rotation._guarded(rotation._rotate)
    assert not rotation._guarded(rotation._rotate)
    assert errors == ["ipset restore failed (exit 1): set portguard-r4 missing"]
    sets.fail = False
    assert rotation._guarded(rotation._rotate) and rotation.rotations == 1


def test_the_thread_rotates_when_asked_and_at_stop() -> None:
    sets = FakeSets()
    rotation = CacheRotation(sets, 3600.0, print)
    rotation.start()
    sets.answer(KEY, 2)
    rotation.request()  # a reload
    deadline = time.monotonic() + 5
    while rotation.rotations == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sets.answer(KEY, 3)
    generations = rotation.results() + rotation.stop()
    assert [g.hits for g in generations] == [{KEY: 2}, {KEY: 3}]


def record() -> DecisionRecord:
    return DecisionRecord(999.0, *KEY[:3], 40000, 25, "outbound", "reject", "block-25",
                          "10.toml", "", "why", "v1", "f1", None)  # fmt: skip


def test_the_worker_reports_the_hits_of_the_keys_it_marked() -> None:
    sets, submitted = FakeSets(), list[list[object]]()
    cache = WorkerCache(CacheRotation(sets, 3600.0, print), submitted.append)
    cache.mark(Outcome(Verdict.REJECT, record(), None, cache=True))
    cache.mark(Outcome(Verdict.REJECT, None, None, cache=True))  # `log = false`: nothing to report
    sets.answer(KEY, 17)
    sets.answer((4, 1, 2, 25), 4)  # another worker's key
    cache.stop()
    [[found]] = submitted
    assert found.record == record() and found.hits == 17  # type: ignore[attr-defined]
    assert cache.fields() == {"keys": 0, "hits": 17, "rotations": 1}


def test_peers_flush_a_generation_only_once_every_worker_read_it(tmp_path: Path) -> None:
    sets, clock = FakeSets(), Clock()
    first = CacheRotation(sets, 10.0, print, primary=True,
                          peers=Peers(tmp_path, 7, (0, 1), 0), clock=clock)  # fmt: skip
    second = CacheRotation(sets, 10.0, print, primary=False,
                           peers=Peers(tmp_path, 7, (0, 1), 1), clock=clock)  # fmt: skip
    sets.answer(KEY, 9)
    assert first._guarded(first._rotate)
    assert sets.calls == ["rotate", "read"]  # not flushed: the second has not read it
    clock.now += 2
    assert not first._guarded(first._rotate)  # postponed
    assert second._guarded(second._follow)
    assert [g.hits for g in second.results()] == [{KEY: 9}]
    assert not second._guarded(second._follow)  # nothing new
    assert first._guarded(first._rotate)
    assert sets.calls == ["rotate", "read", "read", "flush", "rotate", "read"]
    first.stop()
    assert not list(tmp_path.iterdir())  # the files go with the first worker


def test_a_straggler_holds_the_rotation_a_few_seconds_at_most(tmp_path: Path) -> None:
    sets, clock = FakeSets(), Clock()
    first = CacheRotation(sets, 10.0, print, peers=Peers(tmp_path, 7, (0, 1), 0), clock=clock)
    assert first._guarded(first._rotate)
    clock.now += 2
    assert not first._guarded(first._rotate)
    clock.now += 10
    assert first._guarded(first._rotate)  # the other worker never read it: flushed anyway
