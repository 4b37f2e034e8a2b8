"""bench/cpushare.py: /proc parsing and the per-decision arithmetic (no root)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.cpushare import Sample, busy_ticks, children, per_decision, process_times

STAT = "4242 (python (x) y) S 17 4242 1 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3"


def test_process_times_after_the_last_parenthesis() -> None:
    assert process_times(STAT) == (17, 250, 75)


def test_busy_ticks_leave_idle_and_iowait_out() -> None:
    assert busy_ticks("cpu  10 2 30 400 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n") == 63


def test_children_by_parent(tmp_path: Path) -> None:
    for pid, parent in ((10, 1), (11, 10), (12, 10), (13, 11)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(STAT.replace(" 17 ", f" {parent} "))
    (tmp_path / "self").mkdir()
    assert children(10, tmp_path) == [11, 12]


def test_per_decision_in_microseconds() -> None:
    before = Sample({"loop": (100, 50)}, 1000)
    after = Sample({"loop": (130, 60)}, 1100)
    found = per_decision(before, after, 10_000, hz=100)
    assert found["machine"] == 100  # 100 ticks = 1 s over 10,000 decisions
    assert found["processes"] == {"loop": {"user": 30.0, "system": 10.0}}


def test_a_sample_of_this_process() -> None:
    sample = Sample.take({"me": os.getpid()})
    assert sample.machine > 0 and set(sample.processes) == {"me"}
