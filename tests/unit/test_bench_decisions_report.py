"""bench/decisions_report.py: figures and tables from a results document (through JSON, as
`bench_decisions.py --from` reads it)."""

from __future__ import annotations

import json
from typing import Any

from bench import decisions_report as report
from bench.decisions_lab import Events, Flood, Output, Round
from bench.decisions_phases import Point

KERNEL, FLOOR = "kernel-only", "floor"
PG1, PG2 = "portguard, workers = 1, file", "portguard, workers = 2, file"


def measured(rate: int, arrived: int, events: Events | None = None) -> Round:
    return Round(Flood(rate, rate * 2, 0, 2.0), arrived, arrived, rate * 2 - arrived, events)


def points(name: str, edge: int, rates: list[int], ceiling: int | None = None) -> list[Point]:
    """Rates up to `edge` arrive whole, above it `edge` a second arrives; the clients offer
    at most `ceiling` a second."""
    found = []
    for rate in rates:
        offered = min(rate, ceiling or rate)
        arrived = 2 * min(offered, edge)
        found.append(
            Point(
                name,
                rate,
                (
                    Round(
                        Flood(rate, 2 * offered, 0, 2.0),
                        arrived,
                        arrived,
                        2 * offered - arrived,
                        None,
                    ),
                ),
            )
        )
    return found


def capacity(rate: int, kept: bool, dropped: int = 0) -> dict[str, Any]:
    records = rate * 3
    return {
        "rate": rate,
        "records": records,
        "refused": 0,
        "written": records - dropped,
        "keeps_up": kept,
        "outputs": [{"name": "file:/x", "dropped": dropped}],
    }


def document() -> dict[str, Any]:
    rates = [2000, 5000, 10000, 20000, 40000]
    sweep = {
        KERNEL: points(KERNEL, 10**6, rates, ceiling=30000),
        FLOOR: points(FLOOR, 20000, rates),
        PG1: points(PG1, 5000, rates),
        PG2: points(PG2, 10000, rates),
    }
    stop = Events(10000, 10000, 0, (Output("file", 20000, 20000, 0),))
    both = Events(
        9990,
        9990,
        0,
        (Output("file", 20000, 20000, 0), Output("syslog", 20000, 19990, 10)),
        at_collector=9980,
    )
    doc = {
        "meta": {"command": "bench", "date": "today", "machine": "test", "duration_s": 60},
        "roles": {"kernel": KERNEL, "floor": FLOOR, "portguard": [PG1, PG2]},
        "sweep": report.sweep_fields(sweep),
        "latency": {KERNEL: [[40.0, 50.0, 60.0], [45.0, 55.0]], PG1: [[140.0, 150.0, 2000.0]]},
        "events": {
            "rate": 10000,
            "workers": 2,
            "setups": {
                "file": [report.round_fields(measured(5000, 10000, stop))],
                "file + syslog": [report.round_fields(measured(5000, 9990, both))],
            },
        },
        "capacity": {
            "file": [
                capacity(20000, True),
                capacity(40000, True),
                capacity(80000, False, dropped=500),
            ]
        },
    }
    return json.loads(json.dumps(doc))  # what --from reads


def test_rate_summary_takes_the_highest_offered_rate_without_loss() -> None:
    summary = report.rate_summary(document())
    assert summary[FLOOR]["highest"] == 20000 and not summary[FLOOR]["clients_bound"]
    assert summary[PG1]["highest"] == 5000 and summary[PG1]["peak"] == 5000
    assert summary[PG2]["highest"] == 10000
    # the clients could offer 30,000/s at most: kernel-only's figure is a lower bound
    assert summary[KERNEL]["highest"] == 30000 and summary[KERNEL]["clients_bound"]


def test_the_events_phase_runs_at_the_best_portguard_rate() -> None:
    assert report.events_rate(document()) == (PG2, 10000)
    no_loss_free = document()
    for point in no_loss_free["sweep"][PG1] + no_loss_free["sweep"][PG2]:
        point["keeps_up"] = False
    assert report.events_rate(no_loss_free) is None


def test_latency_pools_the_rounds() -> None:
    summary = report.latency_summary([[40.0, 50.0, 60.0], [45.0, 55.0]])
    assert summary == {"connects": 5, "p50": 50.0, "p99": 59.8}


def test_output_totals_count_decisions_where_they_arrived() -> None:
    totals = report.output_totals(document()["events"]["setups"]["file + syslog"])
    assert (totals["sent"], totals["lost"], totals["decided"]) == (10000, 10, 9990)
    assert totals["outputs"]["file"]["decisions"] == 9990
    assert totals["outputs"]["syslog"] == {
        "submitted": 20000,
        "written": 19990,
        "dropped": 10,
        "decisions": 9980,
    }


def test_the_tables_and_the_goals() -> None:
    text = report.markdown(document())
    assert "| floor | 20,000 | 1.00 | 0.67 | 20,000 | 1.00 |" in text
    assert f"| {PG1} | 5,000 | 0.25 |" in text
    assert "| kernel-only | ≥ 30,000 |" in text
    assert f"- {PG2}: 0.50x the floor (goal ≥ 0.8x): not met" in text
    assert f"- {PG1}: connect latency +100 µs p50" in text
    assert "- file: 10,000 decided, 10,000 at the file, 0 events dropped" in text
    assert "- file + syslog: 9,990 decided, 9,990 at the file, 9,980 at the syslog, 10 " in text
    assert "p99 (goal ≤ 150 / ≤ 1000): not met" in text  # +1,890 µs at p99
    assert text.count(": met") == 2  # the file's events and the log process's capacity
    assert "| file | 40,000 | 40,000 | 4.00 | 2.00 | 80,000/s: 500 of 240,000 lost, " in text
    assert "- the log process alone, file: 4.00x portguard's decision rate" in text


def test_capacity_is_the_highest_rate_with_nothing_lost() -> None:
    runs = [capacity(20000, True), capacity(80000, False, 10), capacity(40000, False, 3)]
    summary = report.capacity_summary(runs)
    assert summary == {
        "highest": 20000,
        "written_per_s": 20000,
        "lower_bound": False,
        "over": 40000,
        "lost_over": 3,
        "records_over": 120000,
        "written_over": 0.0,
    }
    assert report.capacity_summary([capacity(20000, True)])["lower_bound"]
    assert report.capacity_summary([capacity(20000, False, 1)])["highest"] == 0


def test_a_partial_document_gives_the_tables_it_has() -> None:
    doc = document()
    for key in ("latency", "events", "capacity"):
        del doc[key]
    text = report.markdown(doc)
    assert "Decision rate" in text and "Connect latency" not in text and "log process" not in text


def test_a_sweep_that_ran_out_of_rates_gives_a_lower_bound() -> None:
    doc = document()
    doc["sweep"][FLOOR] = report.sweep_fields({FLOOR: points(FLOOR, 10**6, [2000, 40000])})[FLOOR]
    summary = report.rate_summary(doc)[FLOOR]
    assert summary["highest"] == 40000 and summary["clients_bound"]
    assert "| floor | ≥ 40,000 |" in report.markdown(doc)


def cpu_round(machine: float, loop: float, log: float | None = None) -> dict[str, Any]:
    processes = {"packet loop": {"user": loop / 2, "system": loop / 2}}
    if log is not None:
        processes["log process"] = {"user": log, "system": 0.0}
    return {"decisions": 1000, "machine": machine, "processes": processes, "sent": 1000}


def test_the_cpu_table_compares_with_the_floor() -> None:
    doc = document()
    doc["cpu"] = {"rate": 20000, "setups": {
        FLOOR: [cpu_round(20.0, 10.0), cpu_round(22.0, 8.0), cpu_round(21.0, 9.0)],
        PG1: [cpu_round(40.0, 12.0, 15.0)],
    }}  # fmt: skip
    text = report.markdown(doc)
    assert "| floor | 20,000 | 3,000 | 9.0 | - | 21.0 | 1.00 | 1.00 |" in text
    assert f"| {PG1} | 20,000 | 1,000 | 12.0 | 15.0 | 40.0 | 0.75 | 0.53 |" in text
