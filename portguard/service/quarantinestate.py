"""The quarantine of one worker, kept in the state directory and shared between workers.

The gate holds the table (pure, `core/detect/quarantine.py`); this keeper does its I/O:

* at start it reads every ``quarantine*.json`` of `[daemon] state_dir` (expired entries
  dropped), so a quarantine survives restarts (and a change of `workers`);
* it writes its own file after every change (``quarantine.json``; with `workers = N`,
  ``quarantine-<queue>.json``: each worker writes only its own), atomically (statefile.py);
* with several workers it merges the other workers' files when their mtime changed, checked
  in the once-a-second housekeeping: a quarantine one worker decided reaches the others
  within about a second (a merge adds entries it lacks or that are newer than its own);
* it logs every change as an event: an alert and its quarantine, an expiry, and the control
  socket's `quarantine-add` / `quarantine-release` (`portguard quarantine`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from portguard.core.detect.quarantine import MANUAL, Entry, Quarantine, entry
from portguard.core.events.detection import alert_event, quarantine_event
from portguard.core.events.record import Event, Observer
from portguard.core.gate import Gate
from portguard.core.policy.detectors import parse_duration, parse_source
from portguard.service.statefile import read_trusted, write_atomic

STATE_PREFIX = "quarantine"
DEFAULT_PORTS = (25, 465, 587)
MAX_QUARANTINE_FILE = 32 * 1024 * 1024  # bytes (65,536 entries take ~13 MB)
Log = Callable[[Event], None]
Problem = Callable[[str, str], None]  # (lifecycle action, message)


def state_file(state_dir: Path, queue: int, workers: int) -> Path:
    name = f"{STATE_PREFIX}.json" if workers == 1 else f"{STATE_PREFIX}-{queue}.json"
    return state_dir / name


class QuarantineKeeper:
    def __init__(
        self, gate: Gate, state_dir: Path, queue: int, workers: int, observer: Observer,
        log: Log, problem: Problem, lifted: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        """`lifted` is called when a quarantine ends (released, expired): the deny cache must
        stop answering its refusals at once."""
        self.gate = gate
        self.lifted = lifted
        self.state_dir = state_dir
        self.path = state_file(state_dir, queue, workers)
        self.workers = workers
        self.observer = observer
        self.log = log
        self.problem = problem
        gate.detection.workers = workers  # each worker sees a disjoint share of destinations
        self._seen: dict[Path, float] = {}  # other workers' files -> mtime merged

    def load(self, now: float) -> None:
        """Every quarantine file of the state directory (this worker's and the others')."""
        for path in sorted(self.state_dir.glob(f"{STATE_PREFIX}*.json")):
            self._merge(path, now)

    def report(self) -> None:
        """Log the gate's alerts and the quarantines they added; keep the table."""
        now, changed = time.time(), False
        for alert, added in self.gate.take_detected():
            self.log(alert_event(alert, self.observer, now))
            if added is not None:
                self.log(quarantine_event("quarantine-added", added, self.observer, now,
                                          "detector"))  # fmt: skip
                changed = True
        if changed:
            self.save()

    def tick(self, now: float) -> None:
        """Once a second: expiry, idle detector sources, the other workers' files."""
        gate = self.gate
        expired = gate.quarantine.expire(now) if gate.quarantine else []
        for found in expired:
            gate.detection.forget(found.key)
            self.log(quarantine_event("quarantine-expired", found, self.observer, now, "expiry"))
        gate.detection.housekeeping(gate.ruleset.detectors, now)
        if self.workers > 1:
            self._merge_peers(now)
        if expired:
            self.lifted()
            self.save()

    def save(self) -> None:
        try:
            write_atomic(self.path, orjson.dumps(self.gate.quarantine.to_dict()))
        except OSError as error:
            self.problem("state-error", f"keeping the quarantine failed: {error}")

    def _merge_peers(self, now: float) -> None:
        for path in self.state_dir.glob(f"{STATE_PREFIX}-*.json"):
            if path == self.path:
                continue
            with contextlib.suppress(OSError):
                mtime = path.stat().st_mtime
                if self._seen.get(path) != mtime:
                    self._seen[path] = mtime
                    self._merge(path, now)

    def _merge(self, path: Path, now: float) -> None:
        try:
            document = orjson.loads(read_trusted(path, MAX_QUARANTINE_FILE))
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as error:
            self.problem("state-error", f"cannot read the quarantine file {path}: {error}")
            return
        self.gate.quarantine.merge(document, now)

    # --- the control socket -----------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """`quarantine-list`, `quarantine-add` (address, seconds or duration, ports),
        `quarantine-release` (address)."""
        command = request["command"]
        try:
            if command == "quarantine-add":
                return self._add(request)
            if command == "quarantine-release":
                return self._release(request)
        except (ValueError, TypeError) as error:
            return {"ok": False, "errors": [str(error)]}
        return {"ok": True, "quarantined": self.listing()}

    def listing(self) -> list[dict[str, Any]]:
        return [found.fields() for found in self.gate.quarantine.entries.values()]

    def _add(self, request: dict[str, Any]) -> dict[str, Any]:
        key = parse_source(str(request.get("address", "")))
        seconds = parse_duration(str(request.get("for", "")))
        ports = [int(port) for port in request.get("ports") or DEFAULT_PORTS]
        if not ports or not all(1 <= port <= 65535 for port in ports):
            raise ValueError("ports are from 1 to 65535")
        now = time.time()
        added = entry(key, MANUAL, now, now + seconds, ports)
        if not self.gate.quarantine.add(added):
            return {"ok": False, "errors": ["the quarantine is full"]}
        self.log(quarantine_event("quarantine-added", added, self.observer, now, "control"))
        self.save()
        return {"ok": True, "quarantined": [added.fields()]}

    def _release(self, request: dict[str, Any]) -> dict[str, Any]:
        key = parse_source(str(request.get("address", "")))
        released: Entry | None = self.gate.quarantine.release(key)
        self.gate.detection.forget(key)
        if released is None:
            return {"ok": True, "released": []}
        self.log(quarantine_event("quarantine-released", released, self.observer, time.time(),
                                  "control"))  # fmt: skip
        self.lifted()
        self.save()
        return {"ok": True, "released": [released.fields()]}


def saved_quarantine(state_dir: Path, now: float) -> tuple[Quarantine, list[str]]:
    """The quarantine the daemon keeps (every worker's file merged), for the offline
    `portguard explain`, and why the files that could not be read were not (no file: no
    quarantine; the daemon writes one at its first change)."""
    table, unreadable = Quarantine(), []
    try:
        paths = sorted(state_dir.glob(f"{STATE_PREFIX}*.json"))
    except OSError as error:
        return table, [f"{state_dir}: {error.strerror or error}"]
    for path in paths:
        try:  # it names addresses only: root's explain may read the daemon user's file
            document = orjson.loads(read_trusted(path, MAX_QUARANTINE_FILE, own=False))
        except (OSError, orjson.JSONDecodeError) as error:
            unreadable.append(f"{path}: {error}")
            continue
        table.merge(document, now)
    return table, unreadable


# --- several workers: the supervisor asks each ------------------------------------------------

Ask = Callable[[Path, dict[str, Any]], dict[str, Any]]


def forward(sockets: list[Path], request: dict[str, Any], ask: Ask) -> dict[str, Any]:
    """A quarantine request handed to every worker; their answers merged (the list: each
    source once, its latest entry)."""
    merged: dict[str, dict[str, Any]] = {}
    released: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for path in sockets:
        try:
            answer = ask(path, request)
        except (OSError, ValueError) as error:
            errors.append(f"{path.name}: {error}")
            continue
        errors += [str(message) for message in answer.get("errors", [])]
        for item in answer.get("quarantined", []):
            if item["source"] not in merged or merged[item["source"]]["since_epoch"] < item[
                    "since_epoch"]:  # fmt: skip
                merged[item["source"]] = item
        released.update((item["source"], item) for item in answer.get("released", []))
    document: dict[str, Any] = {"ok": not errors, "quarantined": list(merged.values())}
    if request["command"] == "quarantine-release":
        document = {"ok": not errors, "released": list(released.values())}
    if errors:
        document["errors"] = sorted(set(errors))
    return document
