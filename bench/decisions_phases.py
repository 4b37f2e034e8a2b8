"""The four measurements of the decision benchmark, each on a prepared BenchLab.

1. `sweep`: each set-up at ascending offered rates (bench/sweep.py's ladder: until two rates
   in a row lose SYNs or the clients cannot offer more, then bisection of the edge); every
   rate `rounds` times (stopping early once most rounds agree), figures the median of them.
2. `latency`: sequential connects to an open port (bench/tcpbulk.py) through kernel-only and
   portguard, rounds alternating, every sample kept.
3. `events_at`: portguard with the file output, and with file + TCP syslog to rsyslog or to
   the stream collector, at one rate: decided against written and dropped, from the stop
   events.
4. `log_capacity`: bench/logcapacity.py in the gateway namespace (the log process alone).
5. `cpu_at`: the floor and portguard at one rate below both edges: CPU µs a decision of each
   process (packet loop, log process) and of the whole machine (bench/cpushare.py).
"""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench.cpushare import Sample, per_decision
from bench.decisions_lab import BenchLab, Round, SetUp, entered, measure_step
from bench.decisions_setups import bench_config
from bench.sweep import ladder
from lab import addresses as a
from lab.netns import LabError
from lab.peers import python_env

TCPBULK = str(Path(__file__).resolve().parent / "tcpbulk.py")
GENERATOR_SHORT = 0.95  # clients that offered less than this of the asked rate were the limit
WARM_UP = 5  # connects before each latency round, not counted (ARP, route cache)
FAILURES = (LabError, RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float = 5.0  # per step
    rounds: int = 3  # per rate (at most)
    settle: float = 1.0  # seconds between entering a set-up and measuring
    attempts: int = 3  # a round that fails (busy machine) is tried again


@dataclass(frozen=True, slots=True)
class Point:
    """One set-up at one asked rate: its rounds and their medians."""

    setup: str
    rate: int
    rounds: tuple[Round, ...]

    @property
    def keeps_up(self) -> bool:
        """Most rounds lost no SYN and dropped no event."""
        return 2 * sum(r.kept_up for r in self.rounds) > len(self.rounds)

    @property
    def events_dropped(self) -> int:
        return int(statistics.median_low(r.events_dropped for r in self.rounds))

    @property
    def offered(self) -> float:
        return statistics.median(r.flood.offered for r in self.rounds)

    @property
    def decisions_per_s(self) -> float:
        return statistics.median(r.decisions_per_s for r in self.rounds)

    @property
    def lost(self) -> int:
        return int(statistics.median_low(r.lost for r in self.rounds))

    @property
    def queue_lost(self) -> int:
        return int(statistics.median_low(r.queue_lost for r in self.rounds))

    @property
    def generator_bound(self) -> bool:
        """The clients could not offer the asked rate: the machine, not the set-up, was full."""
        return self.offered < GENERATOR_SHORT * self.rate

    def describe(self) -> str:
        late = max(r.flood.late for r in self.rounds)
        flags = (
            ("" if self.keeps_up else "  (lost SYNs or events)")
            + ("  (clients short of the rate)" if self.generator_bound else "")
            + (f"  (a client started {late:.2f} s late)" if late > 0.1 else "")
        )
        return (f"{self.rate}/s asked, {self.offered:.0f}/s offered, "
                f"{self.decisions_per_s:.0f} decisions/s, lost {self.lost} "
                f"(queue {self.queue_lost}), events dropped {self.events_dropped}, "
                f"{len(self.rounds)} round(s){flags}")  # fmt: skip


def with_retries(measure: Callable[[], T], attempts: int, what: str, pause: float = 2.0) -> T:
    """`measure()`, tried again after a failure (a daemon slow to start on a busy machine)."""
    for attempt in range(1, attempts + 1):
        try:
            return measure()
        except FAILURES as error:
            if attempt == attempts:
                raise
            print(f"    {what}: {error!s:.300} (attempt {attempt} of {attempts}); again",
                  file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(pause)
    raise AssertionError("unreachable")


def decided_early(rounds: Sequence[Round], wanted: int) -> bool:
    """Enough rounds to know what most of `wanted` rounds would say."""
    good = sum(r.lost == 0 for r in rounds)
    return 2 * good > wanted or 2 * (len(rounds) - good) >= wanted


def point(bench: BenchLab, setup: SetUp, rate: int, opts: Options) -> Point:
    rounds: list[Round] = []
    while len(rounds) < opts.rounds and not decided_early(rounds, opts.rounds):
        step = functools.partial(measure_step, bench, setup, rate, opts.seconds, opts.settle)
        rounds.append(with_retries(step, opts.attempts, f"{setup.name} at {rate}/s"))
    return Point(setup.name, rate, tuple(rounds))


def sweep(bench: BenchLab, setups: Sequence[SetUp], rates: Sequence[int], refine: int,
          opts: Options) -> dict[str, list[Point]]:  # fmt: skip
    runs = {s.name: (lambda rate, s=s: point(bench, s, rate, opts)) for s in setups}
    return ladder(runs, rates, refine, Point.describe,
                  limited=lambda p: not p.keeps_up or p.generator_bound)  # fmt: skip


def connect_samples(bench: BenchLab, count: int) -> list[float]:
    """`count` sequential connects from the business customer to the open port (µs each)."""
    argv = [sys.executable, TCPBULK, "connect", a.SUBMISSION.v4, "25", str(count + WARM_UP)]
    proc = bench.lab.run("biz", argv, capture_output=True, text=True, timeout=60 + count)
    if proc.returncode != 0:
        raise RuntimeError(f"tcpbulk connect failed: {proc.stderr.strip()[-500:]}")
    return [float(us) for us in json.loads(proc.stdout)["connect_us"][WARM_UP:]]


def latency(bench: BenchLab, setups: Sequence[SetUp], rounds: int, connects: int,
            opts: Options) -> dict[str, list[list[float]]]:  # fmt: skip
    """Samples (µs) per set-up and round; a listener on the submission server's port 25."""
    server = bench.lab.popen("net", [sys.executable, TCPBULK, "serve", a.SUBMISSION.v4, "25"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    if server.stdout.readline().strip() != "READY":
        raise LabError("tcpbulk serve did not start")
    found: dict[str, list[list[float]]] = {s.name: [] for s in setups}
    try:
        for number in range(rounds):
            for setup in setups:
                found[setup.name].append(latency_round(bench, setup, connects, opts))
                samples = found[setup.name][-1]
                print(f"  {setup.name}, round {number + 1}: median "
                      f"{statistics.median(samples):.0f} µs", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    return found


def latency_round(bench: BenchLab, setup: SetUp, connects: int, opts: Options) -> list[float]:
    def measure() -> list[float]:
        with entered(bench, setup):
            time.sleep(opts.settle)
            return connect_samples(bench, connects)

    return with_retries(measure, opts.attempts, f"{setup.name}, connects")


def events_at(bench: BenchLab, setups: Sequence[SetUp], rate: int, rounds: int,
              opts: Options) -> dict[str, list[Round]]:  # fmt: skip
    """Each set-up (portguard, its outputs) `rounds` times at `rate`, alternating."""
    found: dict[str, list[Round]] = {s.name: [] for s in setups}
    for _ in range(rounds):
        for setup in setups:
            step = functools.partial(measure_step, bench, setup, rate, opts.seconds, opts.settle)
            measured = with_retries(step, opts.attempts, f"{setup.name} at {rate}/s")
            found[setup.name].append(measured)
            print(f"  {setup.name} at {rate}/s: {measured.events}", flush=True)
    return found


CAPACITY_SETUPS = {"file": False, "file + syslog TCP": True}  # name: with a syslog output
KEEPS_UP = 0.9  # a log process run keeps up when it writes this share of the rate a second


@dataclass(frozen=True, slots=True)
class CapacityRun:
    """One paced run of bench/logcapacity.py (its JSON answer)."""

    rate: int
    result: dict[str, Any]

    @property
    def written_per_s(self) -> float:
        """Events written a second, from the first hand-over until everything was written."""
        return float(self.result["written"]) / float(self.result["drained"])

    @property
    def keeps_up(self) -> bool:
        """Every record taken and written by every output (nothing refused or dropped), at
        KEEPS_UP of the rate at least: an output's buffer must not hide that it falls behind."""
        r = self.result
        dropped = sum(int(o["dropped"]) for o in r["outputs"])
        whole = r["refused"] == 0 and dropped == 0 and r["written"] == r["records"]
        return whole and self.written_per_s >= KEEPS_UP * self.rate

    def describe(self) -> str:
        r = self.result
        dropped = ", ".join(f"{o['name'].split(':')[0]} {o['dropped']}" for o in r["outputs"])
        return (f"{self.rate}/s for {r['seconds']:.1f} s, all written in {r['drained']:.1f} s "
                f"({self.written_per_s:.0f}/s), "
                f"refused {r['refused']}, dropped: {dropped}"
                f"{'' if self.keeps_up else '  (fell behind)'}")  # fmt: skip


def log_capacity(bench: BenchLab, rates: Sequence[int], seconds: float, refine: int,
                 records: int) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """bench/logcapacity.py in the gateway, for the daemon's outputs of CAPACITY_SETUPS: the
    sweep's ladder over paced rates, per set of outputs."""
    bench.start_collector()
    configs = []
    for number, syslog in enumerate(CAPACITY_SETUPS.values()):
        directory = bench.lab.workdir / f"logcapacity-{number}"
        directory.mkdir(exist_ok=True)
        configs.append(directory / "portguard.toml")
        configs[-1].write_text(bench_config(bench.rules, 1, syslog, directory))
    argv = bench.lab.python("bench.logcapacity", "--rules", str(bench.rules), "--records",
                            str(records), *map(str, configs))  # fmt: skip
    server = bench.lab.popen("gw", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=python_env())  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    try:
        if server.stdout.readline().strip() != "READY":
            raise RuntimeError("bench.logcapacity did not start")

        def runner(index: int) -> Callable[[int], CapacityRun]:
            def run(rate: int) -> CapacityRun:
                assert server.stdin is not None and server.stdout is not None
                server.stdin.write(f"run {index} {rate} {seconds}\n")
                server.stdin.flush()
                answer = server.stdout.readline()
                if not answer:
                    raise RuntimeError("bench.logcapacity ended")
                return CapacityRun(rate, json.loads(answer))

            return run

        runs = {name: runner(n) for n, name in enumerate(CAPACITY_SETUPS)}
        found = ladder(runs, rates, refine, CapacityRun.describe)
    finally:
        server.stdin.close()
        server.wait(30)
    return {name: [{**run.result, "keeps_up": run.keeps_up,
                    "written_per_s": run.written_per_s} for run in found[name]]
            for name in found}  # fmt: skip


def cpu_at(bench: BenchLab, setups: Sequence[Any], rate: int, rounds: int,
           opts: Options) -> dict[str, list[dict[str, object]]]:  # fmt: skip
    """Each set-up (with `processes()`) `rounds` times at `rate`, alternating: CPU per decision
    from just before the clients start until they end (`cpushare.per_decision`)."""
    found: dict[str, list[dict[str, object]]] = {s.name: [] for s in setups}
    for _ in range(rounds):
        for setup in setups:
            measured = with_retries(functools.partial(cpu_round, bench, setup, rate, opts),
                                    opts.attempts, f"{setup.name}, CPU at {rate}/s")  # fmt: skip
            found[setup.name].append(measured)
            print(f"  {setup.name} at {rate}/s: {measured}", flush=True)
    return found


def cpu_round(bench: BenchLab, setup: Any, rate: int, opts: Options) -> dict[str, object]:
    with entered(bench, setup):
        time.sleep(opts.settle)
        pids = setup.processes()
        first = bench.arrived()
        before = Sample.take(pids)
        flood = bench.flood(rate, opts.seconds, start_in=0.5)
        after = Sample.take(pids)
        decided = min(bench.arrived() - first, flood.sent)
    return {**per_decision(before, after, decided), "sent": flood.sent}
