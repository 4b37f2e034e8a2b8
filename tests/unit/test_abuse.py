"""The abuse report's tallies: attempts (summaries by `represented`), distinct destinations,
ports, times, alerts and quarantines per source (IPv6 by /64); the same report whether flood
control folded the denies or not."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portguard.config.model import LogConfig
from portguard.core.abuse import AbuseReport, SourceRow, parse_since, since_text, source_group
from portguard.core.events.record import DecisionRecord, Event, lifecycle_event, timestamp
from portguard.log.ecs import ecs_line
from portguard.log.eventflow import EventFlow
from portguard.log.sinks import prepare
from tests.events import OBSERVER

NOW = 1795798800.0  # 2026-11-27T17:00:00Z
BOT = 0x64400A0A  # 100.64.10.10
GOOD = 0x64400A0B  # 100.64.10.11
BOT6 = 0x20010DB8006400100000000000000000  # 2001:db8:64:10::/64
MX = 0xC6336400  # 198.51.100.0
MX6 = 0x20010DB8002500000000000000000000
DEFAULT_WINDOW = LogConfig().flood_window  # the shipped default, 60 s


def record(now: float, src: int, dst: int, dport: int = 25, action: str = "reject",
           version: int = 4, rule: str = "block-25") -> DecisionRecord:  # fmt: skip
    return DecisionRecord(now, version, src, dst, 40000 + int(now * 10) % 20000, dport,
                          "outbound", action, rule, "10-isp.toml", "", "matched", "v1",
                          f"f{now}", None)  # fmt: skip


def logged(records: list[DecisionRecord], window: float) -> list[bytes]:
    """The lines the log process writes for these decisions: EventFlow (the log process's own
    path) with flood control `window`, a flush every second of their time (as the log loop
    does), the rest at stop; rendered as the file output renders them."""
    flow, events, tick = EventFlow(OBSERVER, window), [], records[0].now
    for decided in records:
        while tick + 1 <= decided.now:
            tick += 1
            events += flow.flush(tick)
        events += flow.decision(decided)
    events += flow.flush_all()
    return [ecs_line(prepare(event)) for event in events]


def report_of(lines: list[bytes], **options: Any) -> AbuseReport:
    tally = AbuseReport(**options)
    for line in lines:
        tally.add(orjson.loads(line))
    return tally


def comparable(rows: list[SourceRow]) -> list[tuple[object, ...]]:
    """Everything but the samples (which destinations come first may differ)."""
    return [(r.source, r.attempts, r.destinations, r.exact, r.ports, r.first_seen, r.last_seen)
            for r in rows]  # fmt: skip


def traffic(seed: int = 1) -> list[DecisionRecord]:
    """Ten minutes at a gateway: a bot on port 25 (400 MX, 60 distinct a minute, retries),
    a bot on 25/465/587 under one default-deny rule, an IPv6 bot rotating addresses in its
    /64, a subscriber with one denied attempt, and allowed mail."""
    rng, records = random.Random(seed), []
    for i in range(6000):
        now = NOW + i * 0.1
        minute = int(i * 0.1) // 60
        records.append(record(now, BOT, MX + minute * 40 + rng.randrange(60)))
        if i % 7 == 0:
            port = rng.choice([25, 465, 587])
            records.append(record(now, BOT + 5, MX + rng.randrange(150), port, rule="default"))
        if i % 11 == 0:
            records.append(record(now, BOT6 + rng.randrange(1 << 32), MX6 + rng.randrange(30),
                                  version=6))  # fmt: skip
        if i % 50 == 0:
            records.append(record(now, GOOD + 1, MX, 25, action="allow", rule="smarthost"))
    records.append(record(NOW + 100.5, GOOD, MX + 7))
    return records


def test_folded_by_default_flood_control_the_report_is_the_same_as_with_every_deny() -> None:
    records = traffic()
    every, folded = logged(records, 0), logged(records, DEFAULT_WINDOW)
    assert len(folded) < len(every) / 5  # flood control folded most of it
    plain, summarised = report_of(every).rows(), report_of(folded).rows()
    assert comparable(summarised) == comparable(plain)
    by_source = {row.source: row for row in summarised}
    assert [row.source for row in summarised][:2] == ["100.64.10.10", "100.64.10.15"]
    assert by_source["100.64.10.10"].attempts == 6000
    assert by_source["100.64.10.15"].ports == (25, 465, 587)
    assert by_source["100.64.10.15"].attempts == sum(1 for r in records if r.src == BOT + 5)
    assert by_source["2001:db8:64:10::/64"].attempts == 546  # one source: the /64
    assert (by_source["100.64.10.11"].attempts, by_source["100.64.10.11"].destinations) == (1, 1)
    assert "100.64.10.12" not in by_source  # allowed only


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1.0, 5.0, 60.0, 300.0]))
def test_any_window_gives_the_same_report(seed: int, window: float) -> None:
    records = traffic(seed)[:2000]
    assert comparable(report_of(logged(records, window)).rows()) == comparable(
        report_of(logged(records, 0)).rows()
    )


def test_a_window_mixing_smtp_and_other_ports_counts_only_the_smtp_attempts() -> None:
    """One rule denying 25 and 2525: the attempts are exact; the destinations and times of
    the summary cover its whole window (2525 included: a window does not split them)."""
    records = [record(NOW + i, BOT, MX + i % 4, 2525 if i % 3 else 25, rule="default")
               for i in range(30)]  # fmt: skip
    for window in (0, DEFAULT_WINDOW):
        [row] = report_of(logged(records, window)).rows()
        assert (row.attempts, row.ports) == (10, (25,))
    records[0] = record(NOW, BOT, MX, 25, rule="default")  # the first deny on 25 itself
    [row] = report_of(logged(records, DEFAULT_WINDOW)).rows()
    assert row.attempts == 10


def test_past_100_destinations_the_count_is_an_estimate_both_ways() -> None:
    records = traffic()
    row = report_of(logged(records, DEFAULT_WINDOW)).rows(1)[0]
    distinct = len({r.dst for r in records if r.src == BOT})
    assert not row.exact and abs(row.destinations - distinct) <= distinct * 0.06


def deny(at: float, src: str = "100.64.10.10", dst: str = "198.51.100.25", port: int = 25,
         **aggregate: Any) -> Event:  # fmt: skip
    event: Event = {
        "@timestamp": timestamp(at),
        "event": {"kind": "event", "type": ["connection", "denied"], "action": "reject",
                  "dataset": "portguard.decision"},
        "rule": {"id": "block-25"},
        "source": {"ip": src, "port": 40000},
        "destination": {"ip": dst, "port": port},
        "portguard": {"aggregate": aggregate} if aggregate else {},
    }  # fmt: skip
    return event


def alert(at: float, src: str) -> Event:
    return {"@timestamp": timestamp(at), "source": {"ip": src},
            "event": {"kind": "alert", "action": "fanout-detected",
                      "dataset": "portguard.alert"}}  # fmt: skip


def quarantined(at: float, src: str, action: str = "quarantine-added") -> Event:
    event = lifecycle_event(action, "quarantined", OBSERVER, at)
    return {**event, "source": {"ip": src}}


def test_alerts_and_quarantines_count_for_their_source() -> None:
    tally = report_of([orjson.dumps(e) for e in (
        deny(NOW), alert(NOW + 1, "100.64.10.10"), quarantined(NOW + 2, "100.64.10.10"),
        quarantined(NOW + 3, "100.64.10.10", "quarantine-released"),
        quarantined(NOW + 4, "2001:db8:64:10::"),
        alert(NOW + 5, "2001:db8:64:10::77"))])  # fmt: skip
    first, second = tally.rows()
    assert (first.source, first.attempts, first.alerts, first.quarantines) == (
        "100.64.10.10", 1, 1, 1)  # fmt: skip
    assert (second.source, second.attempts, second.alerts, second.quarantines) == (
        "2001:db8:64:10::/64", 0, 1, 1)  # fmt: skip
    assert second.first_seen == timestamp(NOW + 4) and second.last_seen == timestamp(NOW + 5)


def test_since_leaves_out_older_events_and_counts_them() -> None:
    since = since_text(NOW + 3600, parse_since("30m"))
    tally = AbuseReport(since=since)
    for at in (NOW, NOW + 1799, NOW + 1800, NOW + 3000):
        tally.add(deny(at))
    [row] = tally.rows()
    assert row.attempts == 2 and row.first_seen == timestamp(NOW + 1800)
    assert (tally.events, tally.earlier) == (4, 2)


def test_a_summary_counts_whole_when_its_last_attempt_is_in_range() -> None:
    tally = AbuseReport(since=timestamp(NOW + 30))
    tally.add(deny(NOW + 40, count=5, suppressed=4, first=timestamp(NOW), last=timestamp(NOW + 40)))
    [row] = tally.rows()
    assert row.attempts == 4 and row.first_seen == timestamp(NOW)  # no destinations: old log


@pytest.mark.parametrize(
    "line",
    [1, "text", [], {"event": "x"}, {"message": "another program"},
     {"@timestamp": "2026", "event": {"dataset": "nginx.access"}},
     {"event": {"dataset": "portguard.decision"}},  # no time
     {**deny(NOW), "source": {"ip": "not-an-address"}},
     {**deny(NOW), "destination": None}],
)  # fmt: skip
def test_lines_that_are_no_usable_portguard_event_are_skipped_and_counted(line: object) -> None:
    tally = AbuseReport()
    tally.add(line)
    assert tally.skipped == 1 and tally.rows() == []


def test_non_smtp_ports_and_other_events_are_not_attempts() -> None:
    tally = AbuseReport()
    tally.add(deny(NOW, port=2525))
    tally.add(lifecycle_event("start", "started", OBSERVER, NOW))
    assert tally.rows() == [] and tally.events == 2 and tally.skipped == 0
    only_2525 = AbuseReport(ports=[2525])
    only_2525.add(deny(NOW, port=2525))
    assert only_2525.rows()[0].ports == (2525,)


def test_top_and_ranking_order() -> None:
    """Most attempts first; at equal attempts, most distinct destinations."""
    tally = AbuseReport()
    for n, attempts in enumerate([3, 7, 7, 1]):
        for i in range(attempts):
            tally.add(deny(NOW + i, src=f"100.64.0.{n}", dst=f"198.51.100.{i % (n + 1)}"))
    assert [(r.source, r.attempts) for r in tally.rows(2)] == [("100.64.0.2", 7),
                                                                ("100.64.0.1", 7)]  # fmt: skip
    assert len(tally.rows()) == len(tally.rows(0)) == 4


def test_ipv6_sources_are_grouped_by_their_64() -> None:
    assert source_group("2001:db8:64:10:aaaa:bbbb:cccc:dddd") == "2001:db8:64:10::/64"
    assert source_group("2001:db8:64:10::1") == source_group("2001:db8:64:10:ffff::")
    assert source_group("100.64.10.10") == "100.64.10.10"
    assert source_group("2001:db8:64:11::1") != source_group("2001:db8:64:10::1")
    assert source_group("nonsense") is None and source_group("1.2.3") is None


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("90m", 5400), (" 7d ", 604800),
                                               ("3600s", 3600)])  # fmt: skip
def test_durations(text: str, seconds: int) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "0h", "-1h", "1y", "h", "1.5h", "1w"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_since(text)


def test_rotated_files_in_any_order_give_the_same_report() -> None:
    lines = logged(traffic()[:3000], DEFAULT_WINDOW)
    shuffled = random.Random(3).sample(lines, len(lines))
    assert comparable(report_of(shuffled).rows()) == comparable(report_of(lines).rows())
