"""Decision benchmark (issue 12): how fast portguard decides new connections, against the
floor and kernel-only, and whether its log keeps up; in one run on the namespace lab.

A business customer (on a 100,000-prefix list) opens connections to a closed port 25 on the
internet side; the gateway decides each SYN by a 3-rule policy (bench/decisions_lab.py):

1. decision rate: decisions/s against offered SYNs/s (4 client processes) for kernel-only
   (iptables + ipset, no queue), the floor (bench/floor.py: python-netfilterqueue, struct
   parse, mark, repeat, behind portguard's own iptables hook) and portguard (workers 1 and 2,
   the file output, flood control at its default); the highest rate with no SYN lost (SYNs
   counted at the internet host) and, for portguard, no event dropped (its stop events), and
   the ratios to the floor and to kernel-only;
2. connect latency: sequential connects to an open port, kernel-only against portguard
   (p50, p99, the added µs; every sample kept for the CDF);
3. events written against decided at portguard's highest rate without loss, with the file
   output, with file + TCP syslog to rsyslog and with file + TCP syslog to the stream
   collector (lab/streamcollector.py: a collector that costs the shared cores next to
   nothing, standing in for one on its own machine) (the daemon's stop events);
4. the log process alone (bench/logcapacity.py): decision events/s with each set of outputs,
   as a ratio to the decision rate of 1.
5. CPU a decision (bench/cpushare.py): the floor and portguard (workers = 1) at one rate
   below both edges (--cpu-rate, 20,000/s): µs of CPU each process (packet loop, log
   process) and the whole machine spend a decision, the clients sharing its cores.

Writes bench/results/decisions.json (every round and sample; git-ignored), markdown tables on
stdout for BENCHMARKS.md, and plots in docs/bench/ (matplotlib: `pip install -e '.[bench]'`).
Run as root from the repository root:

    sudo .venv/bin/python bench/bench_decisions.py            # about 30 minutes
    sudo .venv/bin/python bench/bench_decisions.py --quick    # about 6 minutes
    .venv/bin/python bench/bench_decisions.py --from bench/results/decisions.json  # tables, plots

No figure is asserted anywhere; the lab is removed on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the checkout's root, not bench/, on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import decisions_phases as phases
from bench.decisions_lab import PREFIXES, BenchLab
from bench.decisions_report import (
    Document,
    events_rate,
    markdown,
    round_fields,
    sweep_fields,
)
from bench.decisions_setups import Floor, KernelOnly, Portguard
from lab import Lab
from portguard import __version__

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "decisions.json"
PLOTS = ROOT / "docs" / "bench"
PHASES = ("sweep", "latency", "events", "capacity", "cpu")
FULL = dict(
    rates="2000,5000,10000,15000,20000,30000,40000,50000,60000,80000,100000,150000,200000,250000,"
    "300000,400000",
    seconds=5.0, rounds=3, refine=2, connects=300, latency_rounds=5,
    events_seconds=10.0, events_rounds=3,
    capacity_rates="5000,10000,15000,20000,30000,40000,60000,80000,120000,160000,200000",
    capacity_seconds=5.0, capacity_refine=2, cpu_rounds=3,
)  # fmt: skip
QUICK = dict(
    rates="2000,5000,10000,20000,40000,80000,160000,320000", seconds=3.0, rounds=1, refine=1,
    connects=200, latency_rounds=3, events_seconds=5.0, events_rounds=1,
    capacity_rates="5000,10000,20000,40000,80000", capacity_seconds=3.0, capacity_refine=1,
    cpu_rounds=1,
)  # fmt: skip


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="fewer rates, rounds and samples (about 6 min)")
    add("--only", default=",".join(PHASES), help=f"phases to run, of {','.join(PHASES)}")
    add("--clients", type=int, default=4, help="client processes (lab.synflood)")
    add("--prefixes", type=int, default=PREFIXES, help="size of the business list")
    add("--workers", default="1,2", help="portguard set-ups of the sweep")
    add("--rates", help="offered SYNs/s of the sweep, comma-separated")
    add("--seconds", type=float, help="seconds a step")
    add("--rounds", type=int, help="rounds a rate (at most: stops once most agree)")
    add("--refine", type=int, help="bisection steps at each set-up's edge")
    add("--settle", type=float, default=1.0, help="seconds after a set-up starts")
    add("--connects", type=int, help="connects a latency round")
    add("--latency-rounds", type=int)
    add("--events-seconds", type=float)
    add("--events-rounds", type=int)
    add("--events-rate", type=int, help="the events phase's rate (default: from the sweep)")
    add("--events-workers", type=int, default=1, help="... and workers, without a sweep")
    add("--records", type=int, default=100_000, help="distinct records for the log process")
    add("--capacity-rates", help="records/s handed to the log process, comma-separated")
    add("--capacity-seconds", type=float)
    add("--capacity-refine", type=int)
    add("--cpu-rate", type=int, default=20_000, help="the CPU phase's rate (below every edge)")
    add("--cpu-rounds", type=int)
    add("--results", type=Path, default=RESULTS, help="the JSON document")
    add("--plots", type=Path, default=PLOTS, help="directory of the PNG plots")
    add("--no-plots", action="store_true")
    add("--from", dest="source", type=Path, help="no measuring: tables and plots of a document")
    opts = parser.parse_args(argv)
    for key, value in (QUICK if opts.quick else FULL).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.phases = [p for p in opts.only.split(",") if p]
    if unknown := set(opts.phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return opts


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores, Linux {platform.release()}, Python "
            f"{platform.python_version()}, load average {load} at the start")  # fmt: skip


def commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return proc.stdout.strip() or "unknown"


def save(doc: Document, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(doc, indent=1) + "\n")
    path.with_suffix(".tmp").replace(path)


def phase(title: str, doc: Document) -> float:
    print(f"\n== {title} ==", flush=True)
    doc["meta"].setdefault("phase_s", {})
    return time.monotonic()


def run_phases(bench: BenchLab, opts: argparse.Namespace, doc: Document) -> None:
    options = phases.Options(opts.seconds, opts.rounds, opts.settle)
    kernel, floor = KernelOnly(bench), Floor(bench)
    daemons = {w: Portguard(bench, w) for w in map(int, opts.workers.split(","))}
    doc["roles"] = {"kernel": kernel.name, "floor": floor.name,
                    "portguard": [p.name for p in daemons.values()]}  # fmt: skip
    if "sweep" in opts.phases:
        started = phase("1. decision rate: the sweep", doc)
        rates = [int(rate) for rate in opts.rates.split(",")]
        points = phases.sweep(bench, [kernel, floor, *daemons.values()], rates, opts.refine,
                              options)  # fmt: skip
        doc["sweep"] = sweep_fields(points)
        doc["meta"]["phase_s"]["sweep"] = time.monotonic() - started
        save(doc, opts.results)
    if "latency" in opts.phases:
        started = phase("2. connect latency", doc)
        first = next(iter(daemons.values()), Portguard(bench, 1))
        doc["latency"] = phases.latency(bench, [kernel, first], opts.latency_rounds,
                                        opts.connects, options)  # fmt: skip
        doc["meta"]["phase_s"]["latency"] = time.monotonic() - started
        save(doc, opts.results)
    if "events" in opts.phases:
        started = phase("3. events written vs decided", doc)
        workers, rate = events_setup(doc, daemons, opts)
        setups = [Portguard(bench, workers), Portguard(bench, workers, syslog=True),
                  Portguard(bench, workers, syslog=True, stream=True)]  # fmt: skip
        timed = phases.Options(opts.events_seconds, opts.events_rounds, opts.settle)
        found = phases.events_at(bench, setups, rate, opts.events_rounds, timed)
        rounds = {name: [round_fields(r) for r in found[name]] for name in found}
        doc["events"] = {"rate": rate, "workers": workers, "setups": rounds}
        doc["meta"]["phase_s"]["events"] = time.monotonic() - started
        save(doc, opts.results)
    if "capacity" in opts.phases:
        started = phase("4. the log process alone", doc)
        rates = [int(rate) for rate in opts.capacity_rates.split(",")]
        doc["capacity"] = phases.log_capacity(bench, rates, opts.capacity_seconds,
                                              opts.capacity_refine, opts.records)  # fmt: skip
        doc["meta"]["phase_s"]["capacity"] = time.monotonic() - started
        save(doc, opts.results)
    if "cpu" in opts.phases:
        started = phase("5. CPU a decision", doc)
        setups = [floor, Portguard(bench, 1)]
        doc["cpu"] = {"rate": opts.cpu_rate, "setups": phases.cpu_at(
            bench, setups, opts.cpu_rate, opts.cpu_rounds, options)}  # fmt: skip
        doc["meta"]["phase_s"]["cpu"] = time.monotonic() - started
        save(doc, opts.results)


def events_setup(doc: Document, daemons: dict[int, Portguard],
                 opts: argparse.Namespace) -> tuple[int, int]:  # fmt: skip
    """(workers, rate) of the events phase: the portguard set-up of the sweep with the highest
    rate without loss, at that rate (rounded down to 50); or as the options say."""
    chosen = events_rate(doc) if doc.get("sweep") else None
    if opts.events_rate or chosen is None:
        return opts.events_workers, opts.events_rate or 5000
    workers = next(w for w, p in daemons.items() if p.name == chosen[0])
    return workers, int(chosen[1]) // 50 * 50


def measure(opts: argparse.Namespace) -> Document:
    doc: Document = {"meta": {
        "command": "sudo .venv/bin/python bench/bench_decisions.py " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "portguard": __version__, "commit": commit(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
    }}  # fmt: skip
    started = time.monotonic()
    try:
        with Lab() as lab:
            print(f"lab {lab.prefix}: removed at the end, also after an error or Ctrl-C")
            bench = BenchLab(lab, opts.prefixes, opts.clients)
            try:
                run_phases(bench, opts, doc)
            finally:
                bench.close()
    finally:
        doc["meta"]["duration_s"] = time.monotonic() - started
        doc["meta"]["load_at_end"] = os.getloadavg()[0]
        if len(doc) > 1:
            save(doc, opts.results)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.source:
        doc: dict[str, Any] = json.loads(opts.source.read_text())
    elif os.geteuid() != 0:
        print("bench_decisions.py builds the namespace lab: run it as root (sudo)",
              file=sys.stderr)  # fmt: skip
        return 2
    else:
        try:
            doc = measure(opts)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the lab is removed; what was measured is in {opts.results}",
                  file=sys.stderr)  # fmt: skip
            return 130
        print(f"\nresults: {opts.results}")
    print("\n" + markdown(doc))
    if not opts.no_plots:
        from bench.decisions_plots import draw

        for path in draw(doc, opts.plots):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
