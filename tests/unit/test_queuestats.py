"""Parsing the kernel's queue counters."""

from __future__ import annotations

from pathlib import Path

from portguard.io.queuestats import bound_queues, parse_queue_stats, read_queue_stats

TEXT = (
    "    0  21074     0 2   512     0     0        6  1\n"
    "    2  4242     3 2 65535   10     1      99  1\n"
)


def test_rows_by_queue_number() -> None:
    row = parse_queue_stats(TEXT, 0)
    assert row is not None and row["port_id"] == 21074 and row["id_sequence"] == 6
    two = parse_queue_stats(TEXT, 2)
    assert two is not None and two["queue_dropped"] == 10 and two["user_dropped"] == 1
    assert parse_queue_stats(TEXT, 1) is None
    assert parse_queue_stats("garbage line\n", 0) is None


def test_bound_queues_from_a_file(tmp_path: Path) -> None:
    stats = tmp_path / "nfnetlink_queue"
    stats.write_text(TEXT)
    assert bound_queues(0, 3, stats) == [0, 2]
    assert read_queue_stats(0, tmp_path / "absent") is None
