"""The quarantine table: source key -> (detector, until, ports), expiring by time.

A quarantined source's new connections to its ports are refused by the gate before the
policy is asked (`Quarantine.refusal`). The table is plain data: `to_dict` / `from_dict` give
what the daemon keeps in its state directory (quarantine.json), so a quarantine survives
restarts and reloads (it is not part of the RuleSet). Pure: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from portguard.core.events.record import timestamp
from portguard.core.policy.detectors import SourceKey, key_text, parse_source, source_key
from portguard.core.policy.model import Action, Decision

MAX_QUARANTINED = 65_536  # sources quarantined at once; more are refused (and counted)
MANUAL = "manual"  # the detector name of a quarantine added by hand


@dataclass(frozen=True, slots=True)
class Entry:
    """One quarantined source."""

    key: SourceKey
    detector: str  # the detector's name, or "manual"
    since: float
    until: float
    ports: frozenset[int]
    decision: Decision = field(compare=False)  # what the gate answers (built once)

    @property
    def source(self) -> str:
        return key_text(self.key)

    def fields(self) -> dict[str, Any]:
        """As kept in the state file and shown by `portguard quarantine list --json`."""
        return {
            "source": self.source,
            "detector": self.detector,
            "since": timestamp(self.since),
            "until": timestamp(self.until),
            "since_epoch": self.since,
            "until_epoch": self.until,
            "ports": sorted(self.ports),
        }


def entry(key: SourceKey, detector: str, since: float, until: float, ports: Iterable[int]) -> Entry:
    """A quarantine entry with the decision the gate gives its refused connections."""
    reason = f"{key_text(key)} quarantined by {detector} until {timestamp(until)}"
    decision = Decision(Action.REJECT, f"quarantine:{detector}", "quarantine", "", reason)
    return Entry(key, detector, since, until, frozenset(ports), decision)


class Quarantine:
    """The sources in quarantine (empty: `bool(quarantine)` is False, and the gate skips it)."""

    def __init__(self, capacity: int = MAX_QUARANTINED) -> None:
        self.capacity = capacity
        self.entries: dict[SourceKey, Entry] = {}
        self.refused = 0  # connections refused
        self.full = 0  # quarantines not added: the table was full
        self.added = 0  # entries added or replaced so far (what a cache of allows watches)

    def __len__(self) -> int:
        return len(self.entries)

    def refusal(self, version: int, src: int, dport: int, now: float) -> Decision | None:
        """The decision refusing this connection, or None when its source is not (or no
        longer) quarantined for `dport`."""
        found = self.entries.get(source_key(version, src))
        if found is None or dport not in found.ports or now >= found.until:
            return None
        self.refused += 1
        return found.decision

    def get(self, key: SourceKey) -> Entry | None:
        return self.entries.get(key)

    def add(self, new: Entry) -> bool:
        """Quarantine (or extend, or replace) a source; False when the table is full."""
        if new.key not in self.entries and len(self.entries) >= self.capacity:
            self.full += 1
            return False
        self.entries[new.key] = new
        self.added += 1
        return True

    def release(self, key: SourceKey) -> Entry | None:
        return self.entries.pop(key, None)

    def expire(self, now: float) -> list[Entry]:
        """Remove and return the entries whose time is up."""
        done = [found for found in self.entries.values() if now >= found.until]
        for found in done:
            del self.entries[found.key]
        return done

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "sources": [found.fields() for found in self.entries.values()]}

    def merge(self, document: Any, now: float) -> list[Entry]:
        """Add the live entries of a state document (ours at start, another worker's later)
        that this table lacks or holds with an earlier `since`; the entries added."""
        added = []
        for found in entries_of(document):
            if now >= found.until:
                continue
            mine = self.entries.get(found.key)
            if (mine is None or mine.since < found.since) and self.add(found):
                added.append(found)
        return added


def entries_of(document: Any) -> list[Entry]:
    """The well-formed entries of a state document (anything else is skipped)."""
    if not isinstance(document, dict) or not isinstance(document.get("sources"), list):
        return []
    found = []
    for item in document["sources"]:
        try:
            key = parse_source(str(item["source"]))
            ports = [int(port) for port in item["ports"]]
            since, until = float(item["since_epoch"]), float(item["until_epoch"])
            found.append(entry(key, str(item["detector"]), since, until, ports))
        except (KeyError, TypeError, ValueError):
            continue
    return found
