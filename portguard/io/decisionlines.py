"""A run of decision records straight to its ECS lines: one call of portguard's C library
(decisionlines.c) for a whole ``r`` frame the packet loop handed over (log/handoff.py), instead
of unmarshalling each record and rendering it in Python.

The lines are byte for byte what `LineRenderer.decision` writes for the same records (the unit
tests hold them to it). Where the library is missing, or a record holds what the C side does
not render (a rate limit's fields, a value out of range, text that is not well-formed UTF-8),
`render` returns None and the caller renders the frame in Python as before.
"""

from __future__ import annotations

import ctypes
from array import array
from collections.abc import Callable, Sequence

import orjson

from portguard.core.events.lines import LineBlock, decision_builder, observer_json
from portguard.core.events.record import DENIES, ECS_VERSION, DecisionRecord, Observer, shared_parts
from portguard.core.policy.model import Action
from portguard.io.native import MAX_ACTIONS, DecisionForm, address, library

FIRST_RECORDS = 256  # records (and 4 KiB of lines each) the buffers hold at first
MAX_RECORDS = 1 << 16  # the buffers grow up to this many records, then Python renders the rest
LINE_ROOM = 4096
NO_ROOM = -3  # decisionlines.c: the buffers are too small (its other failures: render in Python)


def _head(action: Action) -> tuple[str, str]:
    """An action's "ecs", "log" and "event" fields as JSON without the braces (what
    `LineRenderer` puts before "rule"), and its level."""
    parts = shared_parts(action.value, "", "", "")
    head = {"ecs": {"version": ECS_VERSION}, "log": parts.log, "event": parts.event}
    return orjson.dumps(head).decode()[1:-1], str(parts.log["level"])


class DecisionLines:
    """Renders the ``r`` frames of one log process (one thread: its buffers are its own)."""

    def __init__(self, observer: Observer, lib: ctypes.CDLL | None = None) -> None:
        self.observer = observer
        self._lib = library() if lib is None else lib
        actions = list(Action)[:MAX_ACTIONS]
        heads = [_head(action) for action in actions]
        self._levels = [level for _head_text, level in heads]
        self._denies = {index for index, action in enumerate(actions) if action.value in DENIES}
        self._kept = [action.value.encode() for action in actions]
        self._kept += [head.encode() for head, _level in heads]
        self._kept.append(observer_json(observer).encode())
        self._form = DecisionForm()
        self._form.actions = len(actions)
        for index in range(len(actions)):
            self._form.names[index] = self._kept[index]
            self._form.heads[index] = self._kept[len(actions) + index]
        self._form.observer = self._kept[-1]
        self._grow(FIRST_RECORDS)

    @property
    def available(self) -> bool:
        return self._lib is not None

    def render(
        self, payload: bytes, records: Callable[[], Sequence[DecisionRecord]]
    ) -> LineBlock | None:
        """The lines of the records `payload` carries; None where the C side declines (render
        them in Python). `records()` gives the records themselves, for an event's dict."""
        if self._lib is None:
            return None
        while True:
            found = self._call(payload)
            if found != NO_ROOM:
                break
            if self._room >= MAX_RECORDS:
                return None
            self._grow(self._room * 4)
        if found < 0:
            return None
        marks = self._marks[: 2 * found]
        ends, actions = marks[0::2].tolist(), marks[1::2].tolist()
        data = bytes(self._out[: ends[-1]]) if found else b""
        levels = [self._levels[index] for index in actions]
        denies = not self._denies.isdisjoint(actions)
        return LineBlock(data, ends, levels, denies, decision_builder(records, self.observer))

    def _call(self, payload: bytes) -> int:
        assert self._lib is not None
        return int(self._lib.pg_decision_lines(
            payload, len(payload), ctypes.byref(self._form), address(self._out), len(self._out),
            address(self._marks), self._room, address(self._refs), len(self._refs),
        ))  # fmt: skip

    def _grow(self, room: int) -> None:
        self._room = room
        self._out = bytearray(room * LINE_ROOM)
        self._marks = array("I", bytes(8 * room))
        self._refs = array("I", bytes(4 * room * 16))
