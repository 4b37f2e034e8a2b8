"""Re-evaluating established connections after a reload (`[rules] reevaluate = true`).

The kernel remembers every connection portguard allowed in its conntrack entry (the connmark
carries the verdict and the direction). After a new policy is in force, a background thread
lists those entries, asks the new policy about each, and ends the ones it now denies by
rewriting their connmark: the hook then answers their next packet, from either side, with a
TCP reset (reject) or discards it (drop). Each ended connection gets its own event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from portguard.core.events.record import Event, Observer, ended_event, lifecycle_event
from portguard.core.policy import RuleSet
from portguard.core.policy.model import Action, Decision
from portguard.io import conntrack

Submit = Callable[[Event], object]


def denied(
    ruleset: RuleSet, tracked: Iterable[conntrack.TrackedConnection]
) -> list[tuple[conntrack.TrackedConnection, Decision]]:
    """The connections the policy no longer allows, with its decision (pure).

    Rate limits are not applied: a connection that was let in is not re-counted."""
    found = []
    for conn in tracked:
        decision = ruleset.decide(conn.connection)
        if not decision.action.allows:
            found.append((conn, decision))
    return found


class Reevaluator:
    """A thread that re-evaluates the connection table for the newest policy it was given."""

    def __init__(self, submit: Submit, observer: Observer) -> None:
        self.submit = submit
        self.observer = observer
        self._newest: RuleSet | None = None
        self._wanted = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portguard-reevaluate", daemon=True)
        self._thread.start()

    def request(self, ruleset: RuleSet) -> None:
        """Re-evaluate for `ruleset` (a newer request replaces one not yet started)."""
        self._newest = ruleset
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            ruleset = self._newest
            if ruleset is None:
                continue
            try:
                self.once(ruleset)
            except Exception as error:  # the thread must outlive any surprise
                self._log("reevaluate-failed", f"re-evaluating connections failed: {error!r}",
                          ruleset)  # fmt: skip

    def once(self, ruleset: RuleSet) -> int:
        """One pass over the table; the number of connections ended."""
        try:
            tracked = conntrack.allowed_connections()
            ended = sum(
                self._end(conn, decision, ruleset) for conn, decision in denied(ruleset, tracked)
            )
        except conntrack.ConntrackError as error:
            self._log("reevaluate-failed", f"re-evaluating connections failed: {error}", ruleset)
            return 0
        self._log("reevaluated", f"{ended} of {len(tracked)} allowed connections ended", ruleset,
                  connections=len(tracked), ended=ended)  # fmt: skip
        return ended

    def _end(self, conn: conntrack.TrackedConnection, decision: Decision, ruleset: RuleSet) -> bool:
        how: conntrack.Ending = "reject" if decision.action is Action.REJECT else "drop"
        try:
            if not conntrack.end_connection(conn, how):
                return False  # it closed meanwhile
        except conntrack.ConntrackError as error:
            self._log("reevaluate-failed", str(error), ruleset)
            return False
        key = (conn.version, conn.src, conn.dst, conn.sport, conn.dport)
        self.submit(ended_event(decision, key, conn.direction, ruleset.version, self.observer,
                                time.time()))  # fmt: skip
        return True

    def _log(self, action: str, message: str, ruleset: RuleSet, **extra: object) -> None:
        event = lifecycle_event(action, message, self.observer, time.time(),
                                policy_version=ruleset.version, **extra)  # fmt: skip
        self.submit(event)
