"""The fan-out detector: distinct destinations per source within a sliding window, one alert
per crossing, IPv6 by /64, thresholds per worker, and bounded memory under a spoofed flood."""

from __future__ import annotations

import gc
import tracemalloc

from portguard.core.detect.fanout import (
    MAX_SAMPLES,
    MAX_SOURCES,
    Detection,
    FanoutTable,
    threshold_for,
)
from portguard.core.policy.detectors import Detector
from portguard.core.policy.ports import PortSet

BOT = 0x64400A0A  # 100.64.10.10
SERVERS = 0xC6336400  # 198.51.100.0
V6_BOT = 0x20010DB8006400100000000000000010


def detector(distinct: int = 5, window: int = 600, name: str = "fanout") -> Detector:
    ports = PortSet.from_ranges([(25, 25)])
    return Detector(name, ports, distinct, window, "quarantine", 3600, ports)


def test_an_alert_when_the_distinct_destinations_reach_the_threshold() -> None:
    table = FanoutTable(detector(), 5)
    found = [table.observe(4, BOT, SERVERS + n % 4, 100.0 + n) for n in range(8)]
    assert found[:8] == [None] * 8, "4 distinct servers, however often: no alert"
    alert = table.observe(4, BOT, SERVERS + 9, 110.0)
    assert alert is not None
    assert (alert.distinct, alert.attempts) == (5, 9)
    assert (alert.first, alert.last) == (100.0, 110.0)
    assert set(alert.samples) == {SERVERS, SERVERS + 1, SERVERS + 2, SERVERS + 3, SERVERS + 9}


def test_one_alert_per_crossing_until_the_window_has_passed() -> None:
    table = FanoutTable(detector(distinct=2, window=60), 2)
    assert table.observe(4, BOT, SERVERS, 0.0) is None
    assert table.observe(4, BOT, SERVERS + 1, 1.0) is not None
    assert all(table.observe(4, BOT, SERVERS + n, 2.0 + n) is None for n in range(2, 40))
    assert table.observe(4, BOT, SERVERS + 50, 62.0) is None
    assert table.observe(4, BOT, SERVERS + 51, 63.0) is not None, "a new window, a new alert"


def test_the_window_slides_destinations_older_than_it_are_forgotten() -> None:
    table = FanoutTable(detector(distinct=3, window=10), 3)
    table.observe(4, BOT, SERVERS, 0.0)
    table.observe(4, BOT, SERVERS + 1, 5.0)
    assert table.observe(4, BOT, SERVERS + 2, 11.0) is None, "the first was 11 s ago"
    assert table.observe(4, BOT, SERVERS + 3, 12.0) is not None


def test_ipv6_sources_count_by_their_64() -> None:
    table = FanoutTable(detector(distinct=3), 3)
    assert table.observe(6, V6_BOT, 1, 0.0) is None
    assert table.observe(6, V6_BOT + 1, 2, 1.0) is None  # a privacy address of the same /64
    alert = table.observe(6, V6_BOT + 2, 3, 2.0)
    assert alert is not None and alert.key == (6, V6_BOT >> 64)


def test_samples_are_at_most_ten() -> None:
    table = FanoutTable(detector(distinct=30), 30)
    alerts = [table.observe(4, BOT, SERVERS + n, float(n)) for n in range(30)]
    assert alerts[-1] is not None and len(alerts[-1].samples) == MAX_SAMPLES


def test_only_the_detectors_ports_count_and_a_release_starts_afresh() -> None:
    detection = Detection()
    rules = [detector(distinct=2)]
    assert detection.observe(rules, 4, BOT, SERVERS, 587, 0.0) == []
    assert detection.observe(rules, 4, BOT, SERVERS + 1, 587, 0.0) == []
    assert detection.observe(rules, 4, BOT, SERVERS, 25, 0.0) == []
    detection.forget((4, BOT))
    assert detection.observe(rules, 4, BOT, SERVERS + 1, 25, 1.0) == []
    assert len(detection.observe(rules, 4, BOT, SERVERS + 2, 25, 2.0)) == 1
    assert detection.alerts == 1


def test_a_reload_keeps_an_unchanged_detector_and_drops_a_removed_one() -> None:
    detection, kept, gone = Detection(), detector(distinct=3), detector(name="other")
    detection.observe([kept, gone], 4, BOT, SERVERS, 25, 0.0)
    detection.housekeeping([kept], 1.0)
    assert list(detection.tables) == [kept]
    detection.observe([kept], 4, BOT, SERVERS + 1, 25, 2.0)
    assert len(detection.observe([kept], 4, BOT, SERVERS + 2, 25, 3.0)) == 1


def test_each_worker_counts_to_its_share_of_the_threshold() -> None:
    assert threshold_for(detector(distinct=20), 1) == 20
    assert threshold_for(detector(distinct=20), 3) == 7
    assert threshold_for(detector(distinct=2), 8) == 2
    assert Detection(workers=4).observe([detector(distinct=8)], 4, BOT, 1, 25, 0.0) == []


def test_idle_sources_are_pruned() -> None:
    table = FanoutTable(detector(window=10), 5)
    table.observe(4, BOT, SERVERS, 0.0)
    table.observe(4, BOT + 1, SERVERS, 8.0)
    assert table.prune(15.0) == 1 and list(table.sources) == [(4, BOT + 1)]


def test_a_million_spoofed_sources_stay_within_the_bound_and_a_busy_bot_is_still_caught() -> None:
    """A million spoofed sources, one SYN each, with a real bot trying a new server every
    1,000 of them: the table never holds more than MAX_SOURCES and the bot is caught.
    The bot is the most recently seen source whenever it tries again (every 1,000 sources,
    far less than MAX_SOURCES), so it is never evicted. A bot slower than the flood's turn
    through MAX_SOURCES sources would be evicted and start afresh: the trade-off of a bound
    table (see the next test)."""
    table = FanoutTable(detector(distinct=20), 20)
    caught = []
    for n in range(1_000_000):
        table.observe(4, 0x0A000000 + n, SERVERS + n % 7, float(n) / 10_000)
        if n % 1000 == 0:
            alert = table.observe(4, BOT, SERVERS + n // 1000, float(n) / 10_000)
            if alert is not None:
                caught.append(alert)
        assert len(table.sources) <= MAX_SOURCES
    assert len(table.sources) == MAX_SOURCES
    assert table.evicted >= 1_000_000 - MAX_SOURCES
    assert [alert.key for alert in caught] == [(4, BOT)]


def test_a_bot_slower_than_the_flood_is_evicted_and_counted() -> None:
    table = FanoutTable(detector(distinct=3), 3, max_sources=100)
    table.observe(4, BOT, SERVERS, 0.0)
    for n in range(100):
        table.observe(4, 0x0A000000 + n, SERVERS, 1.0)
    assert (4, BOT) not in table.sources and table.evicted == 1
    table.observe(4, BOT, SERVERS + 1, 2.0)
    assert table.observe(4, BOT, SERVERS + 2, 3.0) is None, "its first attempt was forgotten"


def per_source_bytes(destinations: int, sources: int = 2000) -> float:
    table = FanoutTable(detector(distinct=destinations + 1), destinations + 1)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(sources):
        for d in range(destinations):
            table.observe(4, 0x0A000000 + n, SERVERS + d, 1.0)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / sources


def test_the_documented_bytes_per_source_hold() -> None:
    """The figures of the module docstring: ~500 bytes a source with one destination, ~50
    per further destination (bounds with room: another Python build may differ a little)."""
    one, ten = per_source_bytes(1), per_source_bytes(10)
    assert one < 700
    assert (ten - one) / 9 < 100
