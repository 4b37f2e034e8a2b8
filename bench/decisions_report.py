"""The decision benchmark's results: as a JSON document (bench/results/decisions.json) and as
markdown tables for BENCHMARKS.md. Everything here reads the document only, so tables and plots
can be made again from a saved run (`bench_decisions.py --from FILE`). Pure; unit-tested in
tests/unit/test_bench_decisions_report.py.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.decisions_lab import Round
from bench.decisions_phases import Point
from bench.measure import percentile, ratio

Document = dict[str, Any]
FLOOR_GOAL = 0.8  # issue 12: decisions with the full pipeline at >= 0.8x the floor
ADDED_P50_GOAL = 150.0  # µs over kernel-only
ADDED_P99_GOAL = 1000.0


def round_fields(measured: Round) -> dict[str, Any]:
    fields = dataclasses.asdict(measured)
    fields["decisions_per_s"] = measured.decisions_per_s
    fields["lost"] = measured.lost
    fields["events_dropped"] = measured.events_dropped
    return fields


def point_fields(found: Point) -> dict[str, Any]:
    return {"rate": found.rate, "offered": found.offered,
            "decisions_per_s": found.decisions_per_s, "lost": found.lost,
            "queue_lost": found.queue_lost, "events_dropped": found.events_dropped,
            "keeps_up": found.keeps_up,
            "generator_bound": found.generator_bound,
            "rounds": [round_fields(r) for r in found.rounds]}  # fmt: skip


def sweep_fields(points: Mapping[str, Sequence[Point]]) -> dict[str, list[dict[str, Any]]]:
    return {name: [point_fields(p) for p in found] for name, found in points.items()}


# --- figures from the document ----------------------------------------------------------------


def highest_without_loss(points: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The point of the highest offered rate at which nothing was lost (no SYN, no event)."""
    good = [p for p in points if p["keeps_up"]]
    return max(good, key=lambda p: p["offered"], default=None)


def rate_summary(doc: Document) -> dict[str, dict[str, Any]]:
    """Per set-up: the highest rate with no SYN lost and no event dropped, whether that is only
    a lower bound (the clients could not offer more there, or the sweep's rates ran out before
    anything was lost), and the peak decisions/s over the sweep."""
    found: dict[str, dict[str, Any]] = {}
    for name, points in doc.get("sweep", {}).items():
        best = highest_without_loss(points)
        top = max(points, key=lambda p: p["rate"], default=None)
        found[name] = {
            "highest": best["offered"] if best else 0.0,
            "clients_bound": bool(best and (best["generator_bound"] or best is top)),
            "peak": max((p["decisions_per_s"] for p in points), default=0.0),
        }
    return found


def events_rate(doc: Document) -> tuple[str, float] | None:
    """The portguard set-up with the highest rate without loss, and that rate."""
    summary = rate_summary(doc)
    rated = [(summary[n]["highest"], n) for n in doc["roles"]["portguard"] if n in summary]
    best = max(rated, default=None)
    return (best[1], best[0]) if best and best[0] > 0 else None


def latency_summary(samples: Sequence[Sequence[float]]) -> dict[str, float]:
    pooled = [us for found in samples for us in found]
    return {"connects": len(pooled), "p50": percentile(pooled, 0.5),
            "p99": percentile(pooled, 0.99)}  # fmt: skip


def lost(run: Mapping[str, Any]) -> int:
    """Records a log process run refused, and events its outputs dropped."""
    return int(run["refused"]) + sum(int(o["dropped"]) for o in run["outputs"])


def capacity_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The highest rate the log process kept up with (nothing refused or dropped), whether it
    is only a lower bound (the highest rate tried), and what the lowest rate beyond it lost."""
    best = max((r for r in runs if r["keeps_up"]), key=lambda r: r["rate"], default=None)
    beyond = [r for r in runs if not r["keeps_up"] and r["rate"] > (best or {"rate": 0})["rate"]]
    over = min(beyond, key=lambda r: r["rate"], default=None)
    return {
        "highest": best["rate"] if best else 0,
        "written_per_s": best.get("written_per_s", best["rate"]) if best else 0.0,
        "lower_bound": bool(best and not beyond),
        "over": over["rate"] if over else None,
        "lost_over": lost(over) if over else 0,
        "records_over": over["records"] if over else 0,
        "written_over": over.get("written_per_s", 0.0) if over else 0.0,
    }


def output_totals(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """SYNs, decisions and each output's counters, summed over the rounds of an events
    set-up. Each output also gets `decisions`: the decision events that reached it (the file's
    own count; for syslog, what its collector wrote)."""
    totals: dict[str, Any] = {"sent": 0, "lost": 0, "decided": 0, "in_file": 0,
                              "handoff_dropped": 0, "outputs": {}}  # fmt: skip
    for measured in rounds:
        events = measured["events"]
        totals["sent"] += measured["flood"]["sent"]
        totals["lost"] += measured["lost"]
        for key in ("decided", "in_file", "handoff_dropped"):
            totals[key] += events[key]
        for output in events["outputs"]:
            mine = totals["outputs"].setdefault(output["name"], dict.fromkeys(
                ("submitted", "written", "dropped", "decisions"), 0))  # fmt: skip
            for key in ("submitted", "written", "dropped"):
                mine[key] += output[key]
            arrived = events["in_file"] if output["name"] == "file" else events["at_collector"]
            mine["decisions"] += arrived or 0
    return totals


# --- markdown ---------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(columns: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> str:
    """A markdown table; `align` has an "l" (text) or "r" (figures) for each column."""
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rate_table(doc: Document) -> str:
    summary, roles = rate_summary(doc), doc["roles"]
    floor, kernel = summary.get(roles["floor"]), summary.get(roles["kernel"])

    def ratios(found: Mapping[str, Any], key: str) -> list[str]:
        return [_r(ratio(found[key], base[key]) if base else None) for base in (floor, kernel)]

    rows = [[name, ("≥ " if found["clients_bound"] else "") + _n(found["highest"]),
             *ratios(found, "highest"), _n(found["peak"]), *ratios(found, "peak")]
            for name, found in summary.items()]  # fmt: skip
    return table(["path", "highest rate, no SYN or event lost", "ratio to floor",
                  "ratio to kernel-only", "peak decisions/s", "ratio to floor",
                  "ratio to kernel-only"],
                 "lrrrrrr", rows)  # fmt: skip


def sweep_table(doc: Document) -> str:
    rows = []
    for name, points in doc.get("sweep", {}).items():
        for p in points:
            mark = ("" if p["keeps_up"] else " ✗") + (
                " (clients short)" if p["generator_bound"] else "")  # fmt: skip
            figures = [p["rate"], p["offered"], p["decisions_per_s"]]
            dropped = p.get("events_dropped")  # documents before it was measured: none
            rows.append([name, *map(_n, figures), _n(p["lost"]) + mark, _n(p["queue_lost"]),
                         "-" if dropped is None else _n(dropped),
                         str(len(p["rounds"]))])  # fmt: skip
    return table(["path", "asked/s", "offered/s", "decisions/s", "SYNs lost", "in the queue",
                  "events dropped", "rounds"], "lrrrrrrr", rows)  # fmt: skip


def latency_table(doc: Document) -> str:
    found = {name: latency_summary(s) for name, s in doc.get("latency", {}).items()}
    base = found.get(doc["roles"]["kernel"])
    rows = []
    for name, s in found.items():
        added = ["-", "-"] if base is None or s is base else [
            f"{s['p50'] - base['p50']:.0f}", f"{s['p99'] - base['p99']:.0f}"]  # fmt: skip
        rows.append([name, str(s["connects"]), f"{s['p50']:.0f}", f"{s['p99']:.0f}", *added])
    return table(["path", "connects", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs"],
                 "lrrrrr", rows)  # fmt: skip


def events_table(doc: Document) -> str:
    events, rows = doc.get("events", {}), []
    for name, rounds in events.get("setups", {}).items():
        t = output_totals(rounds)
        for output, c in t["outputs"].items():
            rows.append([name, _n(events["rate"]), _n(t["sent"]), _n(t["lost"]),
                         _n(t["decided"]), output, _n(c["decisions"]), _n(c["submitted"]),
                         _n(c["written"]), _n(c["dropped"]), _n(t["handoff_dropped"])])  # fmt: skip
    return table(["set-up", "offered/s", "SYNs sent", "lost before a decision", "decided",
                  "output", "decision events there", "events submitted", "written", "dropped",
                  "hand-over dropped"], "lrrrrlrrrrr", rows)  # fmt: skip


def capacity_table(doc: Document) -> str:
    summary, chosen = rate_summary(doc), events_rate(doc)
    decisions = chosen[1] if chosen else 0.0
    floor = summary.get(doc["roles"]["floor"], {}).get("highest", 0.0)
    rows = []
    for name, runs in doc.get("capacity", {}).items():
        c = capacity_summary(runs)
        over = ("-" if c["over"] is None else
                f"{_n(c['over'])}/s: {_n(c['lost_over'])} of {_n(c['records_over'])} lost, "
                f"{_n(c['written_over'])}/s written")  # fmt: skip
        rows.append([name, ("≥ " if c["lower_bound"] else "") + _n(c["highest"]),
                     _n(c["written_per_s"]), _r(ratio(c["highest"], decisions)),
                     _r(ratio(c["highest"], floor)), over])  # fmt: skip
    return table(["log process outputs", "highest rate kept up (events/s)", "written/s there",
                  "ratio to portguard's decision rate", "ratio to the floor's",
                  "the next rate tried"], "lrrrrl", rows)  # fmt: skip


def cpu_summary(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds: the machine's µs a decision, and each process's user+system."""
    machine = statistics.median(r["machine"] for r in rounds)
    names = rounds[0]["processes"] if rounds else {}
    processes = {name: statistics.median(r["processes"][name]["user"]
                                         + r["processes"][name]["system"] for r in rounds)
                 for name in names}  # fmt: skip
    return {"machine": machine, "processes": processes,
            "decisions": sum(r["decisions"] for r in rounds)}  # fmt: skip


def cpu_table(doc: Document) -> str:
    cpu, rows = doc.get("cpu", {}), []
    found = {name: cpu_summary(rounds) for name, rounds in cpu.get("setups", {}).items()}
    floor = found.get(doc["roles"]["floor"], {})
    floor_loop = floor.get("processes", {}).get("packet loop")
    for name, c in found.items():
        loop, log = c["processes"].get("packet loop"), c["processes"].get("log process")
        speed = ratio(floor_loop, loop) if floor_loop and loop else None
        rows.append([name, _n(cpu.get("rate", 0)), _n(c["decisions"]), _f(loop), _f(log),
                     _f(c["machine"]), _r(speed),
                     _r(ratio(floor.get("machine", 0.0), c["machine"]))])  # fmt: skip
    return table(["set-up", "offered/s", "decisions", "packet loop µs", "log process µs",
                  "whole machine µs", "floor's packet loop µs / this", "floor's machine µs / this"],
                 "lrrrrrrr", rows)  # fmt: skip


def goals(doc: Document) -> list[str]:
    """Issue 12's goals, each as met or not with its figure."""
    summary, roles, lines = rate_summary(doc), doc["roles"], []
    floor = summary.get(roles["floor"], {}).get("highest", 0.0)
    for name in roles["portguard"]:
        if name in summary and floor:
            share = summary[name]["highest"] / floor
            verdict = "met" if share >= FLOOR_GOAL else "not met"
            lines.append(f"- {name}: {share:.2f}x the floor (goal ≥ {FLOOR_GOAL}x): {verdict}")
    found = {name: latency_summary(s) for name, s in doc.get("latency", {}).items()}
    base = found.pop(roles["kernel"], None)
    for name, s in found.items():
        if base is None:
            break
        p50, p99 = s["p50"] - base["p50"], s["p99"] - base["p99"]
        verdict = "met" if p50 <= ADDED_P50_GOAL and p99 <= ADDED_P99_GOAL else "not met"
        lines.append(f"- {name}: connect latency +{p50:.0f} µs p50, +{p99:.0f} µs p99 (goal "
                     f"≤ {ADDED_P50_GOAL:.0f} / ≤ {ADDED_P99_GOAL:.0f}): {verdict}")  # fmt: skip
    chosen = events_rate(doc)
    for name, runs in doc.get("capacity", {}).items():
        if chosen is None:
            break
        share = capacity_summary(runs)["highest"] / chosen[1]
        verdict = "met" if share >= 1 else "not met"
        lines.append(f"- the log process alone, {name}: {share:.2f}x portguard's decision "
                     f"rate (goal: above 1, the log outruns the packets): {verdict}")  # fmt: skip
    for name, rounds in doc.get("events", {}).get("setups", {}).items():
        t = output_totals(rounds)
        dropped = t["handoff_dropped"] + sum(o["dropped"] for o in t["outputs"].values())
        kept = all(o["decisions"] == t["decided"] for o in t["outputs"].values())
        verdict = "met" if dropped == 0 and kept else "not met"
        there = ", ".join(f"{_n(o['decisions'])} at the {n}" for n, o in t["outputs"].items())
        lines.append(f"- {name}: {_n(t['decided'])} decided, {there}, {_n(dropped)} events "
                     f"dropped (goal: every decision logged, 0 dropped): {verdict}")  # fmt: skip
    return lines


def markdown(doc: Document) -> str:
    meta = doc.get("meta", {})
    parts = [f"`{meta.get('command', 'bench/bench_decisions.py')}`, {meta.get('date', '')}, "
             f"{meta.get('machine', '')}; {meta.get('duration_s', 0) / 60:.0f} min."]  # fmt: skip
    sections = [("Decision rate for new connections", rate_table), ("The sweep", sweep_table),
                ("Connect latency (sequential connects to an open port)", latency_table),
                ("Events written vs decided at portguard's highest rate", events_table),
                ("The log process alone", capacity_table),
                ("CPU a decision (user + system; the machine: every core, clients included)",
                 cpu_table)]  # fmt: skip
    for title, table in sections:
        text = table(doc)
        if text.count("\n") > 1:
            parts.append(f"**{title}**\n\n{text}")
    if goals(doc):
        parts.append("**Goals (issue 12)**\n\n" + "\n".join(goals(doc)))
    return "\n\n".join(parts) + "\n"
