"""The demo's cases as data, and the pure parts of its report (event matching, the table)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lab import addresses as a
from lab.peers import SendResult, endpoint
from portguard.core.events.record import DECISION_DATASET

SLACK = 1.0  # seconds an event's @timestamp may lie outside its attempt's time window


@dataclass(frozen=True, slots=True)
class Case:
    """One kind of connection attempt, made over IPv4 and IPv6."""

    number: int
    title: str
    from_ns: str
    to: a.DualStack
    port: int
    mode: str = "plain"
    expect: str = "delivered"  # the client's outcome with the shipped rules in force
    expect_event: bool = True  # False for ports portguard does not hook


CASES: tuple[Case, ...] = (
    Case(1, "subscriber -> external MX", "sub", a.MX, a.PORT_SMTP, expect="refused"),
    Case(2, "subscriber -> ISP smarthost", "sub", a.SMARTHOST, a.PORT_SMTP),
    Case(3, "subscriber -> submission STARTTLS", "sub", a.SUBMISSION, 587, "starttls"),
    Case(3, "subscriber -> submission implicit TLS", "sub", a.SUBMISSION, 465, "implicit"),
    Case(4, "business -> external MX", "biz", a.MX, a.PORT_SMTP),
    Case(5, "internet -> subscriber (inbound)", "net", a.SUBSCRIBER, 25, expect="refused"),
    Case(6, "subscriber -> MX, unhooked port", "sub", a.MX, a.PORT_UNHOOKED, expect_event=False),
)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One case over one IP version, with what the client saw and when (wall clock)."""

    case: Case
    version: int
    src: str
    dst: str
    result: SendResult
    started: float
    ended: float

    @property
    def label(self) -> str:
        return f"{self.case.number}. {self.case.title} {endpoint(self.dst, self.case.port)}"


@dataclass(frozen=True, slots=True)
class Row:
    attempt: Attempt
    event: dict[str, Any] | None
    ok: bool


def plan(cases: Iterable[Case]) -> list[tuple[Case, int]]:
    """Every case over IPv4, then IPv6, in case order."""
    return [(case, version) for case in cases for version in (4, 6)]


def field(event: dict[str, Any], dotted: str) -> Any:
    """A nested ECS field by its dotted name ("rule.id"); None when absent."""
    value: Any = event
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def is_decision(event: dict[str, Any]) -> bool:
    """A per-connection decision event (the file output also carries lifecycle events)."""
    dataset = field(event, "event.dataset")
    return dataset == DECISION_DATASET or (dataset is None and "source" in event)


def event_time(event: dict[str, Any]) -> float | None:
    stamp = event.get("@timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def same_ip(left: Any, right: str) -> bool:
    try:
        return ipaddress.ip_address(str(left)) == ipaddress.ip_address(right)
    except ValueError:
        return False


def concerns(event: dict[str, Any], attempt: Attempt) -> bool:
    """Same (source.ip, destination.ip, destination.port) as the attempt."""
    return (
        same_ip(field(event, "source.ip"), attempt.src)
        and same_ip(field(event, "destination.ip"), attempt.dst)
        and field(event, "destination.port") == attempt.case.port
    )


def in_window(event: dict[str, Any], attempt: Attempt) -> bool:
    moment = event_time(event)
    return moment is None or attempt.started - SLACK <= moment <= attempt.ended + SLACK


def match_events(
    attempts: Sequence[Attempt], events: Sequence[dict[str, Any]]
) -> list[dict[str, Any] | None]:
    """For each attempt, the first unused event of its tuple within its time window."""
    used: set[int] = set()
    matched: list[dict[str, Any] | None] = []
    for attempt in attempts:
        found = None
        for index, event in enumerate(events):
            if index in used or not is_decision(event):
                continue
            if concerns(event, attempt) and in_window(event, attempt):
                used.add(index)
                found = event
                break
        matched.append(found)
    return matched


def judge(attempt: Attempt, event: dict[str, Any] | None, with_daemon: bool) -> bool:
    """Whether an attempt went as the case expects (without a daemon everything delivers)."""
    if not with_daemon:
        return attempt.result.outcome == "delivered" and event is None
    has_event = event is not None
    return attempt.result.outcome == attempt.case.expect and has_event == attempt.case.expect_event


def rows(
    attempts: Sequence[Attempt], events: Sequence[dict[str, Any]], with_daemon: bool
) -> list[Row]:
    matched = match_events(attempts, events)
    return [
        Row(attempt, event, judge(attempt, event, with_daemon))
        for attempt, event in zip(attempts, matched, strict=True)
    ]


def all_matched(attempts: Sequence[Attempt], events: Sequence[dict[str, Any]]) -> bool:
    """Whether every attempt that expects an event has one (to know when to stop waiting)."""
    matched = match_events(attempts, events)
    return all(
        e is not None for at, e in zip(attempts, matched, strict=True) if at.case.expect_event
    )


HEADERS = ("attempt", "outcome", "ms", "verdict", "rule", "check")


def cells(row: Row, with_daemon: bool) -> tuple[str, ...]:
    result, event = row.attempt.result, row.event
    verdict = str(field(event, "event.action")) if event else "-"
    rule = str(field(event, "rule.id")) if event else "-"
    want = row.attempt.case.expect if with_daemon else "delivered"
    check = "ok" if row.ok else f"FAIL (want {want})"
    return (row.attempt.label, result.outcome, f"{result.elapsed_ms:.1f}", verdict, rule, check)


def format_line(line: Sequence[str], widths: Sequence[int]) -> str:
    padded = [
        text.rjust(width) if index == 2 else text.ljust(width)
        for index, (text, width) in enumerate(zip(line, widths, strict=True))
    ]
    return " | ".join(padded).rstrip()


def render_table(table: Sequence[Row], with_daemon: bool) -> str:
    """A plain-text table: attempt | outcome | ms | verdict | rule | check."""
    lines = [HEADERS, *(cells(row, with_daemon) for row in table)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    rendered = [format_line(line, widths) for line in lines]
    return "\n".join([rendered[0], "-+-".join("-" * w for w in widths), *rendered[1:]])
