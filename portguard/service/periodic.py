"""The periodic jobs of a packet loop: each runs when due, between batches of packets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Periodic:
    """A job of the loop run every `interval` seconds (monotonic clock), first at `due`."""

    interval: float
    job: Callable[[], object]
    due: float

    def run_if_due(self, now: float) -> None:
        if now >= self.due:
            self.due = now + self.interval
            self.job()
