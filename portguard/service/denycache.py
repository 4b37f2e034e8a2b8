"""The deny cache's rotation, in a thread of the worker: never on the packet loop.

Every ``[queue] deny_cache`` seconds, and when a reload asks for it, the first worker rotates
the kernel's deny cache (``DenyCacheSets``: the kernel starts an empty generation), reads the
frozen generation's keys and hits and flushes it. The loop collects each ``Generation``
(``results``) and reports the keys it marked (core/denycache.py ``CacheBook``).

With ``workers = N`` the sets are shared, and each key is known by one worker only (the kernel
sends an address pair to one queue), so every worker reads every frozen generation: the first
worker publishes a rotation in a small file of the run-time directory (``Peers``), each worker
writes the number of the generation it read into a file of its own, and the first worker
flushes a frozen generation only once every worker read it (it postpones its next rotation a
second at a time meanwhile, at most ``STRAGGLER`` seconds). With one worker there are no files.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from portguard.config.model import Config
from portguard.core.denycache import CacheBook, CacheKey, KernelHits
from portguard.core.events.record import DecisionRecord
from portguard.core.gate import Gate, Outcome
from portguard.io.hooks.backend import DenyCacheSets, HookError
from portguard.io.hooks.factory import deny_cache_sets
from portguard.io.hooks.watch import error_text
from portguard.log.logprocess import LogProcess

RETRY: Final = 1.0  # seconds between tries of a postponed rotation, and the followers' polls
STRAGGLER: Final = 5.0  # seconds a frozen generation waits for a worker that has not read it


@dataclass(frozen=True, slots=True)
class Generation:
    """One frozen generation of the kernel's deny cache: from ``start`` to ``switched``."""

    number: int
    start: float
    switched: float
    hits: dict[CacheKey, int] = field(default_factory=dict)


class Peers:
    """workers = N: the rotation's files in the run-time directory, named after the daemon."""

    def __init__(self, run_dir: Path, token: int, queues: Sequence[int], queue_num: int) -> None:
        self.run_dir, self.token, self.queues, self.queue_num = run_dir, token, queues, queue_num

    def _path(self, suffix: str) -> Path:
        return self.run_dir / f"deny-cache-{self.token}.{suffix}"

    def publish(self, generation: Generation) -> None:
        text = f"{generation.number} {generation.start!r} {generation.switched!r}\n"
        _write(self._path("generation"), text)

    def published(self) -> Generation | None:
        try:
            number, start, switched = self._path("generation").read_text().split()
        except (OSError, ValueError):
            return None
        return Generation(int(number), float(start), float(switched))

    def mark_read(self, number: int) -> None:
        _write(self._path(f"read-{self.queue_num}"), f"{number}\n")

    def all_read(self, number: int) -> bool:
        for queue_num in self.queues:
            try:
                if int(self._path(f"read-{queue_num}").read_text()) < number:
                    return False
            except (OSError, ValueError):
                return False
        return True

    def remove(self) -> None:
        for suffix in ["generation", *(f"read-{q}" for q in self.queues)]:
            with contextlib.suppress(OSError):
                self._path(suffix).unlink()


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees half a line."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class CacheRotation:
    """Rotates (``primary``) or follows (the other workers) the kernel's deny cache in a thread."""

    def __init__(
        self,
        sets: DenyCacheSets,
        period: float,
        on_error: Callable[[str], None],
        primary: bool = True,
        peers: Peers | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sets, self.period, self.on_error = sets, period, on_error
        self.primary, self.peers, self.clock = primary, peers, clock
        self.number = 0  # the last generation frozen (primary) or read (followers)
        self.rotations = 0
        self._start = clock()  # when the generation in force began
        self._due = self._start + period
        self._unflushed: tuple[int, float] | None = None  # (number, frozen at): peers reading
        self._asked = False
        self._results: queue.SimpleQueue[Generation] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_error = ""

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="deny-cache", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Rotate now (a reload: no cached deny of the old policy may answer any more)."""
        self._asked = True
        self._wake.set()

    def results(self) -> list[Generation]:
        """The generations read since the last call (the loop reports them)."""
        found: list[Generation] = []
        with contextlib.suppress(queue.Empty):
            while True:
                found.append(self._results.get_nowait())
        return found

    def stop(self) -> list[Generation]:
        """End the thread; with one worker, rotate a last time (the hits so far are read
        before the hooks and their sets go); what is left to report."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self.primary and self.peers is None:
            self._guarded(self._rotate)
        if self.peers is not None and self.primary:
            self.peers.remove()
        return self.results()

    def _run(self) -> None:
        while not self._stopping:
            now = self.clock()
            if not self.primary:
                self._guarded(self._follow)
            elif self._asked or now >= self._due:
                self._asked = False
                rotated = self._guarded(self._rotate)
                self._due = self.clock() + (self.period if rotated else RETRY)
                self._asked = self._asked or not rotated
            wait = RETRY if not self.primary or self._asked else self._due - self.clock()
            self._wake.wait(max(0.0, min(wait, RETRY)))
            self._wake.clear()

    def _guarded(self, step: Callable[[], bool]) -> bool:
        """A step; a failure (a set missing, ipset or nft failing) is reported once until a
        step succeeds again."""
        try:
            done = step()
        except (HookError, OSError) as error:
            message = error_text(error)
            if message != self._last_error:
                self._last_error = message
                self.on_error(message)
            return False
        self._last_error = ""
        return done

    def _rotate(self) -> bool:
        """Switch generations, read the frozen one; False when postponed for a peer."""
        if not self._flush_read():
            return False
        switched = self.clock()
        self.sets.rotate()
        frozen = Generation(self.number + 1, self._start, switched)
        self.number, self._start, self.rotations = frozen.number, switched, self.rotations + 1
        if self.peers is not None:
            self.peers.publish(frozen)
            self._unflushed = (frozen.number, switched)
        try:
            self._read(frozen)
        finally:
            if self.peers is None:
                self.sets.flush_frozen()  # read or not: the next rotation needs it empty
        return True

    def _flush_read(self) -> bool:
        """workers = N: flush the frozen generation once every worker read it."""
        if self._unflushed is None or self.peers is None:
            return True
        number, frozen_at = self._unflushed
        if not self.peers.all_read(number) and self.clock() - frozen_at < STRAGGLER:
            return False
        self.sets.flush_frozen()
        self._unflushed = None
        return True

    def _follow(self) -> bool:
        published = self.peers.published() if self.peers is not None else None
        if published is None or published.number <= self.number:
            return False
        self.number = published.number
        self._read(published)
        return True

    def _read(self, frozen: Generation) -> None:
        hits = self.sets.read_frozen()
        self._results.put(Generation(frozen.number, frozen.start, frozen.switched, hits))
        if self.peers is not None:
            self.peers.mark_read(frozen.number)


class WorkerCache:
    """A worker's side of the deny cache: the keys it marked (``CacheBook``) and the rotation
    thread; the loop calls ``mark`` for each cacheable deny and ``report`` once a second."""

    def __init__(self, rotation: CacheRotation, submit: Callable[[list[KernelHits]], None]) -> None:
        self.rotation = rotation
        self.submit = submit
        self.book = CacheBook()
        self.hits = 0  # kernel hits reported (this worker's logged keys), since start

    def request(self) -> None:
        """A reload: the first worker rotates now."""
        if self.rotation.primary:
            self.rotation.request()

    def mark(self, outcome: Outcome) -> None:
        if type(outcome.event) is DecisionRecord:  # a rule with `log = false` is not reported
            self.book.mark(outcome.event, outcome.event.now)

    def report(self) -> None:
        """Once a second: the generations read meanwhile, each key's hits with its decision.
        The first call starts the rotation thread (the hook, with its sets, is in place)."""
        if not self.rotation.started:
            self.rotation.start()
        for generation in self.rotation.results():
            self._report(generation)

    def stop(self) -> None:
        for generation in self.rotation.stop():
            self._report(generation)

    def _report(self, generation: Generation) -> None:
        found = self.book.report(generation.hits, generation.start, generation.switched)
        if found:
            self.hits += sum(hits.hits for hits in found)
            self.submit(found)

    def fields(self) -> dict[str, int] | None:
        """For the status section."""
        return {"keys": len(self.book), "hits": self.hits, "rotations": self.rotation.rotations}


class NoCache:
    """The deny cache turned off: the worker's calls do nothing."""

    def request(self) -> None: ...
    def mark(self, outcome: Outcome) -> None: ...
    def report(self) -> None: ...
    def stop(self) -> None: ...
    def fields(self) -> dict[str, int] | None:
        return None


NO_CACHE: Final = NoCache()


def worker_cache(
    config: Config,
    backend: str | None,
    gate: Gate,
    log: LogProcess,
    lifecycle: Callable[..., None],
    primary: bool = True,
    private_control: Path | bool | None = None,
) -> WorkerCache | NoCache:
    """The worker's deny cache; NO_CACHE when it is off (``deny_cache = 0``, or no hook: a
    worker the daemon did not tell its backend). Hits go to `log`, failures are logged as
    ``deny-cache-error`` through `lifecycle(action, message)`. A forked worker (its
    ``private_control`` socket given) meets its peers in the run-time directory, next to it.
    Sets the `gate`'s cache period: it marks cacheable denies only when the cache is on."""
    gate.cache_period = float(config.queue.deny_cache) if backend is not None else 0.0
    if not config.queue.deny_cache or backend is None:
        return NO_CACHE
    peers = None
    if config.queue.workers > 1 and isinstance(private_control, Path):
        queue_num = int(private_control.suffix[1:])  # status.worker_socket: <control>.<queue>
        peers = Peers(private_control.parent, os.getppid(), tuple(config.queue.numbers), queue_num)
    rotation = CacheRotation(deny_cache_sets(backend), float(config.queue.deny_cache),
                             lambda message: lifecycle("deny-cache-error", message), primary,
                             peers)  # fmt: skip
    return WorkerCache(rotation, log.submit_kernel_hits)
