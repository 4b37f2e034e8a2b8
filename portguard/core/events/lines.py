"""ECS lines rendered straight from decision records and ended flows (pure: `now` is passed in).

The log process writes two events for most connections: the decision and, when conntrack
forgets it, its flow end. Building each as a dict of dicts and then serialising it costs more
than the decision itself. Here the parts an event shares with the others of its rule, action,
direction and observer are serialised once (by orjson, so the escaping is orjson's) and a
line is put together from them and the event's own values: the same bytes as
``orjson.dumps`` of the event `connection_event` or `flow_end_event` builds, which the unit
tests hold it to.

A `RenderedEvent` carries one line, the level and time every output reads, and what builds the
event's dict: an output in another format (OCSF, CEF) or flood control asks for it with
`as_event`, and only then is it built, in the caller's thread, with the uncached timestamp
functions (the log process renders lines only when every output writes ECS, so its outputs'
threads never need the dict). A `LineBlock` carries the lines of a whole run of decisions that
portguard's C library rendered (io/decisionlines.py: the same bytes again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from portguard.core.events.communityid import community_id_of
from portguard.core.events.flowend import EndedFlow, flow_end_event, iso_ns
from portguard.core.events.record import (
    ECS_VERSION,
    FLOW_DATASET,
    DecisionRecord,
    Event,
    Observer,
    Timestamps,
    address_text,
    connection_event,
    observer_fields,
    shared_parts,
)

MAX_CACHED = 4096  # rendered parts kept per kind (rules x actions, texts of reasons)


class RenderedEvent:
    """An event as its ECS line (without the newline), its ``log.level`` and ``@timestamp``,
    and how to build its dict (`event`) for whoever needs more than the line."""

    __slots__ = ("_args", "_build", "level", "line", "stamp")

    def __init__(
        self, line: bytes, level: str, stamp: str, build: Callable[..., Event], *args: Any
    ) -> None:
        self.line = line
        self.level = level
        self.stamp = stamp
        self._build = build
        self._args = args

    def event(self) -> Event:
        """The event as a dict: byte for byte what `line` holds, once serialised."""
        return self._build(*self._args)


STAMP_AT = len('{"@timestamp":"')  # where a rendered line's @timestamp starts
STAMP_SIZE = len("2026-12-05T15:09:24.123456Z")


class LineBlock:
    """A run of events rendered together in C (decisions: io/decisionlines.py; flow ends:
    io/ctparse.py): their ECS lines, each ended by a newline, in one `data`; where each line
    ends and its ``log.level``; whether any is a deny. A file output writes the block with one
    call; any other output takes its `events()`, each a `RenderedEvent` whose dict `build`
    makes (from the event's index) when asked for."""

    __slots__ = ("build", "data", "denies", "ends", "levels")

    def __init__(
        self,
        data: bytes,
        ends: Sequence[int],
        levels: Sequence[str],
        denies: bool,
        build: Callable[[int], Event],
    ) -> None:
        self.data = data
        self.ends = ends
        self.levels = levels
        self.denies = denies
        self.build = build

    def __len__(self) -> int:
        """The events it holds."""
        return len(self.ends)

    def events(self) -> list[RenderedEvent]:
        """Each event on its own, in order."""
        data, start = self.data, 0
        events: list[RenderedEvent] = []
        for end, level in zip(self.ends, self.levels, strict=True):
            line = data[start : end - 1]
            stamp = line[STAMP_AT : STAMP_AT + STAMP_SIZE].decode()
            events.append(RenderedEvent(line, level, stamp, self.build, len(events)))
            start = end
        return events


def decision_builder(
    records: Callable[[], Sequence[DecisionRecord]], observer: Observer
) -> Callable[[int], Event]:
    """A LineBlock's `build` for a run of decisions: the event of the index-th record."""
    return lambda index: connection_event(records()[index], observer)


LogItem = Event | RenderedEvent  # one event the log process hands its outputs
Queued = LogItem | LineBlock  # what an output's queue takes


def as_event(item: LogItem) -> Event:
    """The item as an event dict (built now for a rendered event)."""
    return item.event() if isinstance(item, RenderedEvent) else item


class LineRenderer:
    """Renders the ECS lines of one log process's decisions and flow ends (one thread: its
    caches are its own)."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.stamps = Timestamps()
        self._observer = observer_json(observer)
        self._heads: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        self._texts: dict[str, str] = {}

    def decision(self, record: DecisionRecord) -> RenderedEvent:
        """The decision's event (`connection_event` of the record), rendered."""
        head, level = self._head(record)
        version, src, dst, sport, dport = (record.version, record.src, record.dst, record.sport,
                                           record.dport)  # fmt: skip
        stamp = self.stamps(record.now)
        limit = "" if record.limit is None else f',"limit":{_json(record.limit)}'
        line = (
            f'{{"@timestamp":"{stamp}",{head},'
            f'"source":{{"ip":"{address_text(version, src)}","port":{sport}}},'
            f'"destination":{{"ip":"{address_text(version, dst)}","port":{dport}}},'
            f'"network":{{"transport":"tcp","iana_number":"6","type":"ipv{version}",'
            f'"direction":{self._text(record.direction)},'
            f'"community_id":"{community_id_of(version, src, dst, sport, dport)}"}},'
            f'"observer":{{{self._observer}}},'
            f'"portguard":{{"flow_id":{_json(record.flow_id)},'
            f'"reason":{self._text(record.reason)},'
            f'"policy_version":{self._text(record.policy_version)}{limit}}}}}'
        )
        return RenderedEvent(line.encode(), level, stamp, connection_event, record, self.observer)

    def flow_end(self, ended: EndedFlow, now: float) -> RenderedEvent:
        """The flow end's event (`flow_end_event` of it at `now`), rendered."""
        version, src, dst, sport, dport = ended.key
        stamp = self.stamps(now)
        source = f'"ip":"{address_text(version, src)}","port":{sport}'
        destination = f'"ip":"{address_text(version, dst)}","port":{dport}'
        totals = ""
        original, reply = ended.original, ended.reply
        if original is not None and reply is not None:
            source += f',"packets":{original.packets},"bytes":{original.bytes}'
            destination += f',"packets":{reply.packets},"bytes":{reply.bytes}'
            totals = (f',"packets":{original.packets + reply.packets},'
                      f'"bytes":{original.bytes + reply.bytes}')  # fmt: skip
        line = (
            f'{{"@timestamp":"{stamp}",{FLOW_HEAD}{self._times(ended)}}},'
            f'"source":{{{source}}},"destination":{{{destination}}},'
            f'"network":{{"transport":"tcp","iana_number":"6","type":"ipv{version}",'
            f'"direction":{self._text(ended.direction.value)}{totals},'
            f'"community_id":"{community_id_of(version, src, dst, sport, dport)}"}},'
            f'"observer":{{{self._observer}}}}}'
        )
        return RenderedEvent(line.encode(), "info", stamp, flow_end_event, ended, self.observer,
                             now)  # fmt: skip

    def _times(self, ended: EndedFlow) -> str:
        start, duration = ended.start_ns, ended.duration_ns
        if start is None:
            return ""
        times = f',"start":"{iso_ns(start, self.stamps)}"'
        if duration is not None:
            times += f',"end":"{iso_ns(start + duration, self.stamps)}","duration":{duration}'
        return times

    def _head(self, record: DecisionRecord) -> tuple[str, str]:
        """ecs, log, event and rule of a decision's event (shared by its rule and action),
        rendered once, and its level."""
        key = (record.action, record.rule_id, record.ruleset, record.description)
        found = self._heads.get(key)
        if found is None:
            parts = shared_parts(*key)
            head = _json({"ecs": {"version": ECS_VERSION}, "log": parts.log,
                          "event": parts.event, "rule": parts.rule})[1:-1]  # fmt: skip
            found = (head, parts.log["level"])
            if len(self._heads) >= MAX_CACHED:
                self._heads.clear()
            self._heads[key] = found
        return found

    def _text(self, text: str) -> str:
        """A string as JSON (quoted and escaped as orjson does); the texts met are cached."""
        found = self._texts.get(text)
        if found is None:
            found = _json(text)
            if len(self._texts) >= MAX_CACHED:
                self._texts.clear()
            self._texts[text] = found
        return found


# a flow end's ecs, log and the event's fixed fields (its times follow)
FLOW_HEAD = (
    f'"ecs":{{"version":"{ECS_VERSION}"}},"log":{{"level":"info"}},'
    '"event":{"kind":"event","category":["network"],"type":["connection","end"],'
    '"action":"flow-end","outcome":"success",'
    f'"dataset":"{FLOW_DATASET}"'
)


def observer_json(observer: Observer) -> str:
    """The observer's fields as JSON, without the braces."""
    return _json(observer_fields(observer))[1:-1]


def _json(value: object) -> str:
    return orjson.dumps(value).decode()
