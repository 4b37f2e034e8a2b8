"""Building a new rule set aside, in a thread, while the packet loop keeps deciding.

A reload (SIGHUP, `portguard reload`, a DNS refresh) asks for a load; the thread reads and
compiles the rule files; the loop collects the result and swaps it in with one assignment,
or keeps the old policy when the files have errors. Requests that arrive while a load runs
are answered by the next load, so an edit made during a reload is never missed.

The worker and the supervisor judge a result alike: at most MAX_REPORTED_ERRORS of its errors
(`capped`), and a timed re-resolution is applied only when built from the same files
(`same_files`) and only when an address changed (`same_resolution`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from portguard.core.errors import SourceError
from portguard.core.policy import RuleSet

Reply = Callable[[dict[str, Any]], None]
MAX_WAITING = 32  # reload requests parked for the next load; beyond, refused at once
BUSY = "too many reload requests are waiting; try again when the running one has answered"


@dataclass
class LoadResult:
    ruleset: RuleSet | None
    errors: list[str]
    replies: list[Reply] = field(default_factory=list)
    reason: str = "reload"


class PolicyLoad:
    """One load at a time in a background thread; `collect()` from the loop."""

    def __init__(self, load: Callable[[], RuleSet], wake: Callable[[], None]) -> None:
        self._load = load
        self._wake = wake
        self._lock = threading.Lock()
        self._running = False
        self._done: LoadResult | None = None
        self._waiting: list[Reply] = []
        self._waiting_reason: str | None = None
        self._current: list[Reply] = []  # the running load's replies

    @property
    def running(self) -> bool:
        return self._running

    def request(self, reply: Reply | None = None, reason: str = "reload") -> None:
        """Ask for a load; `reply` gets the answer of the load that reads the files after now."""
        with self._lock:
            full = reply is not None and len(self._waiting) >= MAX_WAITING
            if not full:
                self._enqueue(reply, reason)
        if full and reply is not None:  # answered outside the lock: a reply may be slow
            reply({"ok": False, "errors": [BUSY]})

    def _enqueue(self, reply: Reply | None, reason: str) -> None:
        if reply is not None:
            self._waiting.append(reply)
        if self._waiting_reason in (None, "resolve"):  # an operator's request wins
            self._waiting_reason = reason
        if not self._running and self._done is None:
            self._start_waiting()

    def collect(self, apply: Callable[[LoadResult], None] | None = None) -> LoadResult | None:
        """The finished load, if any, handed to ``apply``; only then does the next waiting
        load start, so that it builds on (and a forked worker answers with) the policy that
        ``apply`` swapped in, never the one before it."""
        with self._lock:
            result, self._done = self._done, None
        if result is None:
            return None
        if apply is not None:
            apply(result)
        with self._lock:
            if self._waiting_reason is not None and not self._running and self._done is None:
                self._start_waiting()
        return result

    def abandon(self) -> list[Reply]:
        """The loop is ending: every reply still owed (the running load's, an uncollected
        result's, the parked ones), taken, so that the caller answers each once; a load that
        finishes later answers nobody, and no parked load starts."""
        with self._lock:
            done = self._done.replies if self._done is not None else []
            owed = [*self._current, *done, *self._waiting]
            for replies in (self._current, done, self._waiting):
                replies.clear()  # in place: the running load's result holds the same list
            self._waiting_reason = None
        return owed

    def _start_waiting(self) -> None:
        replies, self._waiting = self._waiting, []
        reason, self._waiting_reason = self._waiting_reason or "reload", None
        self._running = True
        self._current = replies
        self._thread = threading.Thread(
            target=self._run, args=(replies, reason), name="portguard-load", daemon=True
        )
        self._thread.start()

    def _run(self, replies: list[Reply], reason: str) -> None:
        try:
            result = LoadResult(self._load(), [], replies, reason)
        except SourceError as error:
            result = LoadResult(None, list(error.messages), replies, reason)
        except Exception as error:  # a bug must not kill the daemon: keep the old policy
            result = LoadResult(
                None, [f"unexpected error while loading: {error!r}"], replies, reason
            )
        with self._lock:
            self._done = result
            self._running = False
            self._current = []  # the result's now: answered by `collect`'s caller
        self._wake()


MAX_REPORTED_ERRORS = 100


def capped(errors: list[str]) -> list[str]:
    """At most MAX_REPORTED_ERRORS messages (a million bad lines must not become one event)."""
    if len(errors) <= MAX_REPORTED_ERRORS:
        return errors
    return [*errors[:MAX_REPORTED_ERRORS], f"... and {len(errors) - MAX_REPORTED_ERRORS} more"]


def same_files(old: RuleSet, new: RuleSet) -> bool:
    """Built from the same rule and list file contents."""
    digests = [{path: entry.digest for path, entry in rs.lists.items()} for rs in (old, new)]
    return old.texts == new.texts and digests[0] == digests[1]


def same_resolution(old: RuleSet, new: RuleSet) -> bool:
    """Host names resolved to the same addresses (in any order: round-robin DNS)."""
    return {h: sorted(a) for h, a in old.resolved.items()} == {
        h: sorted(a) for h, a in new.resolved.items()
    }
