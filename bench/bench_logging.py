"""Logging benchmark: what logging every decision costs, in process and in the running daemon.

(a) In process, per decision, on distinct subscriber -> MX port-25 SYNs (rule block-25):
    `Gate.handle` alone (baseline; it builds the decision's record, plain values) against
    `Gate.handle` plus building the event and `EventWriter.submit` to a real file sink, in the
    formats ecs, ocsf and cef (and ecs to two file sinks); for reference the sink's `write`
    called in the loop (no writer thread), and the writer behind a LogProcess (forked; the loop
    only hands the record over, the log process builds and renders the event). Figures:
    the packet loop's wall time (handle + submit: what the verdicts wait for) and its thread's
    CPU time, the wall time until `close()` has drained every event to the file, and the CPU
    time of the whole process (loop, writer threads, log process). The GIL switch interval is
    the daemon's (0.5 ms) unless --switch-interval says otherwise. Runs alternate; medians.
(b) End to end, as root, in the namespace lab: the real daemon (workers = 1, flood_window = 0
    so every attempt is its own decision event, `[queue] per_source = false` so the kernel
    drops none of the one source's SYNs before the queue, a fresh daemon for every step) while
    `lab.synflood` in the subscriber namespace sends SYNs to the MX's port 25 at
    increasing rates. Three set-ups alternate at every rate: the baseline (block-25 with
    `log = false`: the same decisions, no event), a file output, and a file output plus a
    syslog TCP output to a plain socket reader in the gateway namespace. Per step: SYNs sent,
    packets the kernel queue lost before a decision (queue_dropped + user_dropped), the backlog
    in the queue when the generator stopped, decisions per second while it ran, the daemon's
    CPU per decision (its packet loop's process, and its log process if any), and the events
    that reached the file and the collector. A set-up's ladder stops after two rates in a row
    lost packets; the highest rate without a lost packet is then refined by bisection.

Run from the repository root:
    sudo .venv/bin/python bench/bench_logging.py                  # both parts, about 5 minutes
    .venv/bin/python bench/bench_logging.py --no-lab              # part (a) only, no root
    sudo .venv/bin/python bench/bench_logging.py --quick          # shorter: fewer, shorter steps
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the checkout's root, not bench/, on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.decisions_setups import for_benchmark
from bench.measure import settle
from bench.sweep import ladder
from lab import Lab, synflood
from lab import addresses as a
from lab.daemon import SHIPPED_RULES, LabDaemon
from lab.peers import python_env
from lab.streamcollector import StreamCollector
from portguard.core.events.record import (
    DecisionRecord,
    Event,
    Loggable,
    Observer,
    Timestamps,
    connection_event,
)
from portguard.core.gate import Gate
from portguard.core.policy import RuleSet
from portguard.io.nfqueue import BATCH_PACKETS
from portguard.io.policyfiles import load_ruleset
from portguard.log.sinks import prepare
from portguard.log.writer import EventWriter
from portguard.service.worker import GIL_SWITCH_INTERVAL
from portguard.shipped import RULES_DIR

try:
    from portguard.log.sinks import file_sink
except ImportError:  # before issue 4 the sinks lived in writer.py
    from portguard.log.writer import file_sink  # type: ignore[attr-defined, no-redef]
try:
    from portguard.log.logprocess import LogProcess
except ImportError:  # outputs in threads of the worker only
    LogProcess = None  # type: ignore[assignment,misc]

MARKER = b'"portguard.decision"'  # once in every decision event (ECS event.dataset)
SYSLOG_PORT = 10514


# --- (a) in process --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Costs:
    """Microseconds per decision."""

    loop: float  # the packet loop's wall time: handle (+ submit), GIL waits included
    loop_cpu: float  # the packet loop thread's own CPU time
    drained: float  # wall time until every event is in the file
    cpu: float  # process CPU time, all threads (and a log process)
    dropped: float  # events a log process never got (its socket buffer was full)
    log_cpu: float = 0.0  # CPU time of the log process (reaped child), per event


def syn_packets(count: int) -> list[bytes]:
    """`count` distinct SYNs from four subscriber addresses to the MX's port 25."""
    first = int.from_bytes(socket.inet_aton(a.SUBSCRIBER.v4), "big")
    mx = int.from_bytes(socket.inet_aton(a.MX.v4), "big")
    template = synflood.SynTemplate(4, [first + i for i in range(4)], mx, a.PORT_SMTP)
    return [
        template.packet(*synflood.attempt(i, 4), (i * 2654435761) & 0xFFFFFFFF, i & 0xFFFF)
        for i in range(count)
    ]


@functools.cache
def shipped_rules() -> RuleSet:
    return load_ruleset([RULES_DIR])


def run_once(packets: list[bytes], formats: Sequence[str], mode: str, directory: Path) -> Costs:
    """One pass over `packets` with a fresh gate and a file sink per entry of `formats`, fed
    by the loop through `mode`: "writer" (queue + thread per sink), "inline" (the loop calls
    the sink's write) or "process" (LogProcess: the writer in a forked process)."""
    gate = Gate(shipped_rules(), Observer("bench", "0"))
    paths = [directory / f"events-{n}.{fmt}" for n, fmt in enumerate(formats)]
    sinks = [file_sink(path, fmt) for path, fmt in zip(paths, formats, strict=True)]
    feed = Feed(sinks, mode)
    handle, now, submits = gate.handle, 1.8e9, feed.submits()
    child = children_seconds()
    cpu, start, thread = cpu_seconds(), time.perf_counter(), time.thread_time()
    for n, packet in enumerate(packets, 1):
        event = handle(packet, False, True, now).event
        if event is not None:
            for submit in submits:
                submit(event)
        if n % BATCH_PACKETS == 0:  # the worker's loop after each batch of packets
            feed.flush()
    loop, thread = time.perf_counter() - start, time.thread_time() - thread
    feed.close()
    drained, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    child = children_seconds() - child
    for path in paths:
        lines = path.read_bytes().count(b"\n")
        assert lines + feed.dropped() == len(packets), f"{path.name}: {lines} lines"
        path.unlink()
    per = 1e6 / len(packets)
    return Costs(loop * per, thread * per, drained * per, cpu * per, feed.dropped(), child * per)


def children_seconds() -> float:
    """CPU time of this process's reaped children (a log process)."""
    times = os.times()
    return times.children_user + times.children_system


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (a log process)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


class Feed:
    """How the loop hands events to the sinks (see run_once)."""

    def __init__(self, sinks: list[Any], mode: str) -> None:
        self.sinks, self.mode = sinks, mode
        self.writer = EventWriter([] if mode == "inline" else sinks)
        self.process: Any = None
        if mode == "process":
            assert LogProcess is not None, "no portguard.log.logprocess here"
            self.process = LogProcess(self._started, Observer("bench", "0"))
            self.process.start()  # the writer's threads start in the log process
        else:
            self.writer.start()

    def _started(self) -> EventWriter:
        self.writer.start()
        return self.writer

    def submits(self) -> list[Callable[[Loggable], object]]:
        if not self.sinks:
            return []
        if self.process:
            return [self.process.add]  # the record itself: the log process builds the event
        observer, stamp = Observer("bench", "0"), Timestamps()

        def built(submit: Callable[[Event], object]) -> Callable[[Loggable], object]:
            def build_and_submit(logged: Loggable) -> object:
                if isinstance(logged, DecisionRecord):
                    return submit(connection_event(logged, observer, stamp))
                return submit(logged)

            return build_and_submit

        if self.mode == "inline":  # a sink writes prepared events (the writer prepares them)
            return [built(lambda event, w=sink.write: w(prepare(event))) for sink in self.sinks]
        return [built(self.writer.submit)]

    def flush(self) -> None:
        if self.process is not None:
            self.process.flush()

    def close(self) -> None:
        if self.process is not None:
            self.process.close(None, timeout=120)
            return
        self.writer.close(timeout=60)
        for sink in self.sinks if self.mode == "inline" else ():
            sink.close()

    def dropped(self) -> int:
        return int(self.process.dropped) if self.process is not None else 0


BASELINE = "Gate.handle only (baseline)"
SETUPS: dict[str, tuple[tuple[str, ...], str]] = {  # sink formats, how events get there
    BASELINE: ((), "writer"),
    "+ writer, file sink, ecs": (("ecs",), "writer"),
    "+ writer, file sink, ocsf": (("ocsf",), "writer"),
    "+ writer, file sink, cef": (("cef",), "writer"),
    "+ writer, two file sinks, ecs": (("ecs", "ecs"), "writer"),
    "+ inline sink.write, ecs": (("ecs",), "inline"),
    "+ log process, file sink, ecs": (("ecs",), "process"),
}


def in_process(decisions: int, rounds: int) -> dict[str, Costs]:
    packets = syn_packets(decisions)
    setups = {k: v for k, v in SETUPS.items() if v[1] != "process" or LogProcess is not None}
    runs: dict[str, list[Costs]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory(prefix="bench-logging-") as tmp:
        run_once(packets[:2000], ("ecs",), "writer", Path(tmp))  # warm-up
        for _ in range(rounds):
            for name, (formats, mode) in setups.items():
                runs[name].append(run_once(packets, formats, mode, Path(tmp)))
    return {
        name: Costs(*(statistics.median(getattr(c, f) for c in costs) for f in Costs.__slots__))
        for name, costs in runs.items()
    }


def in_process_report(figures: dict[str, Costs], decisions: int, rounds: int) -> str:
    base = figures[BASELINE]
    lines = [
        f"(a) in process: {decisions:,} decisions per run, median of {rounds} rounds, GIL switch "
        f"interval {sys.getswitchinterval() * 1e3:g} ms; µs per decision, ratio to Gate.handle",
        f"{'set-up':32} {'loop µs':>8} {'ratio':>6} {'loop CPU':>8} {'drained µs':>10} "
        f"{'ratio':>6} {'CPU µs':>7} {'ratio':>6} {'dropped':>7} {'log proc µs':>11}",
    ]
    for name, c in figures.items():
        lines.append(
            f"{name:32} {c.loop:8.1f} {c.loop / base.loop:6.2f} {c.loop_cpu:8.1f} "
            f"{c.drained:10.1f} {c.drained / base.drained:6.2f} {c.cpu:7.1f} "
            f"{c.cpu / base.cpu:6.2f} {c.dropped:7.0f} {c.log_cpu:11.1f}"
        )
    return "\n".join(lines)


# --- (b) the daemon in the lab -----------------------------------------------------------------


class Collector:
    """The stream collector (lab/streamcollector.py) in the gateway namespace: it counts the
    decision events it receives."""

    def __init__(self, lab: Lab) -> None:
        argv = lab.argv("gw", [])
        self.stream = StreamCollector(lab.workdir, argv, SYSLOG_PORT, MARKER, address=a.GW_WAN.v4)
        self.stream.start()
        self.output = f'{{ type = "syslog", address = "tcp://{a.GW_WAN.v4}:{SYSLOG_PORT}" }}'

    def decisions(self) -> int:
        return self.stream.marked()


@dataclass(frozen=True, slots=True)
class Step:
    rate: int  # offered (asked of the generator)
    sent: int
    seconds: float
    lost: int  # queue_dropped + user_dropped
    backlog: int  # packets waiting in the queue when the generator stopped
    decided: int  # packets decided while the generator ran
    cpu_us: float  # the daemon's CPU per decided packet (the packet loop's process)
    log_cpu_us: float  # the same for its child processes (a log process), 0 without
    filed: int  # decision events in the file
    forwarded: int | None  # decision events the collector received

    @property
    def decisions_per_s(self) -> float:
        return self.decided / self.seconds

    @property
    def keeps_up(self) -> bool:
        return self.lost == 0

    @property
    def cpu_total(self) -> float:
        return self.cpu_us + self.log_cpu_us


def daemon_cpu(pid: int) -> tuple[float, float]:
    """Seconds of CPU (user + system) the process used, and those its children (a log
    process) used."""
    own = children = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if stat.parent.name == str(pid):
            own += seconds
        elif fields[1] == str(pid):
            children += seconds
    return own, children


def generator_argv(lab: Lab, rate: int, seconds: float, sources: int) -> list[str]:
    first = a.SUBSCRIBER.v4 if sources == 1 else "100.64.10.100"
    return lab.python("lab.synflood", "--src", first, "--dst", a.MX.v4,
                      "--dport", str(a.PORT_SMTP), "--rate", str(rate),
                      "--seconds", str(seconds), "--sources", str(sources))  # fmt: skip


def step(lab: Lab, daemon: LabDaemon, setup: SetUp, rate: int, *, seconds: float,
         sources: int) -> Step:  # fmt: skip
    """One generator run at `rate` against a daemon that has decided nothing yet."""
    assert daemon.proc is not None
    collector = setup.collector
    forwarded0 = collector.decisions() if collector else 0
    before, cpu0 = lab.queue_stats(), daemon_cpu(daemon.proc.pid)
    proc = lab.run("sub", generator_argv(lab, rate, seconds, sources), capture_output=True,
                   text=True, timeout=seconds + 60, env=python_env())  # fmt: skip
    after, cpu1 = lab.queue_stats(), daemon_cpu(daemon.proc.pid)
    if proc.returncode != 0 or before is None or after is None:
        raise RuntimeError(f"generator or queue failed: {proc.stderr}")
    result = json_line(proc.stdout)
    d = {key: after[key] - before[key] for key in ("id_sequence", "queue_dropped", "user_dropped")}
    decided = d["id_sequence"] - d["user_dropped"] - after["queue_total"]
    events = d["id_sequence"] - d["user_dropped"] if setup.logs_decisions else 0
    filed = settle(lambda: daemon.events_path.read_bytes().count(MARKER), events)
    forwarded = None
    if collector is not None:
        forwarded = settle(lambda: collector.decisions() - forwarded0, events)
    per = 1e6 / max(decided, 1)
    return Step(rate, int(result["sent"]), float(result["seconds"]),
                d["queue_dropped"] + d["user_dropped"], after["queue_total"], decided,
                (cpu1[0] - cpu0[0]) * per, (cpu1[1] - cpu0[1]) * per, filed,
                forwarded)  # fmt: skip


def json_line(text: str) -> dict[str, float]:
    return dict(json.loads(text.strip().splitlines()[-1]))


def describe(s: Step) -> str:
    forwarded = "" if s.forwarded is None else f" syslog {s.forwarded}"
    return (f"{s.rate}/s: sent {s.sent} in {s.seconds:.2f} s, lost {s.lost}, "
            f"backlog {s.backlog}, "
            f"{s.decisions_per_s:.0f} decisions/s, CPU {s.cpu_us:.0f} + {s.log_cpu_us:.0f} µs, "
            f"file {s.filed}"
            f"{forwarded}{'' if s.keeps_up else '  (lost packets)'}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SetUp:
    """One way of running the daemon: its rules and outputs."""

    name: str
    rules: Path
    collector: Collector | None = None  # a syslog TCP output to it, besides the file
    logs_decisions: bool = True


def quiet_rules(directory: Path) -> Path:
    """The shipped rules with `log = false` on block-25: the same decisions, no events."""
    rules = directory / "rules-quiet"
    shutil.copytree(RULES_DIR, rules)
    isp, marker = rules / "10-isp.toml", 'id = "block-25"\n'
    text = isp.read_text()
    assert marker in text, "the shipped rules changed: update quiet_rules"
    isp.write_text(text.replace(marker, marker + "log = false\n"))
    return rules


def fresh_step(lab: Lab, setup: SetUp, rate: int, *, seconds: float, sources: int) -> Step:
    """A step with a daemon of its own (flood_window 0, one worker, the file output and no
    stdout, no per-source SYN limit), so that no step inherits another's flow table."""
    extra = [setup.collector.output] if setup.collector else []
    daemon = LabDaemon(lab, [setup.rules], flood_window=0, workers=1, extra_outputs=extra)
    daemon.config.write_text(for_benchmark(daemon.config.read_text()))
    daemon.start()
    try:
        return step(lab, daemon, setup, rate, seconds=seconds, sources=sources)
    finally:
        daemon.stop()


BASE = "no event (baseline)"


def in_lab(
    rates: Sequence[int], seconds: float, sources: int, refine: int
) -> dict[str, list[Step]]:
    with Lab() as lab:
        for i in range(sources if sources > 1 else 0):
            address = f"100.64.10.{100 + i}/32"
            lab.run("sub", ["ip", "addr", "add", address, "dev", a.SUB_IF], check=True)
        collector = Collector(lab)
        shown = shlex.join(generator_argv(lab, 0, seconds, sources))
        print("generator: ip netns exec <lab>-sub " + shown.replace("--rate 0", "--rate RATE"))
        setups = [
            SetUp(BASE, quiet_rules(lab.workdir), logs_decisions=False),
            SetUp("file", SHIPPED_RULES),
            SetUp("file + syslog TCP", SHIPPED_RULES, collector),
        ]
        runs = {
            setup.name: functools.partial(fresh_step, lab, setup, seconds=seconds, sources=sources)
            for setup in setups
        }
        return ladder(runs, rates, refine, describe)


LAB_COLUMNS = (
    f"{'set-up':19} {'offered/s':>9} {'lost':>6} {'backlog':>7} {'decided/s':>9} {'ratio':>5} "
    f"{'loop µs':>7} {'log µs':>6} {'CPU ratio':>9} {'in file':>7} {'at syslog':>9}"
)


def lab_report(figures: dict[str, list[Step]], seconds: float) -> str:
    lines = [
        f"(b) the daemon in the lab, workers = 1, {seconds:g} s per rate. ratio: decided/s to "
        "the offered rate; CPU ratio: the daemon's CPU per decision (loop + log process) to "
        "the baseline's at the same rate",
        LAB_COLUMNS,
    ]
    base = {s.rate: s for s in figures.get(BASE, [])}
    for name, steps in figures.items():
        for s in steps:
            offered, other = s.sent / s.seconds, base.get(s.rate)
            cpu = f"{s.cpu_total / other.cpu_total:9.2f}" if other else f"{'-':>9}"
            lines.append(
                f"{name:19} {offered:9.0f} {s.lost:6d} {s.backlog:7d} {s.decisions_per_s:9.0f} "
                f"{s.decisions_per_s / offered:5.2f} {s.cpu_us:7.0f} {s.log_cpu_us:6.0f} {cpu} "
                f"{s.filed:7d} {'-' if s.forwarded is None else s.forwarded:>9}"
            )
    best = {name: max((s.rate for s in steps if s.keeps_up), default=0)
            for name, steps in figures.items()}  # fmt: skip
    for name, rate in best.items():
        ratio = f" ({rate / best[BASE]:.2f} of the baseline's)" if best.get(BASE) else ""
        lines.append(f"highest rate without a lost packet, {name}: {rate}/s{ratio}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000, help="(a) decisions per run")
    parser.add_argument("--rounds", type=int, default=5, help="(a) rounds")
    parser.add_argument("--rates", default="2000,3000,4000,5000,6000,8000,10000,12000,15000,20000",
                        help="(b) offered SYNs per second, ascending")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=6.0, help="(b) seconds per rate")
    parser.add_argument("--refine", type=int, default=2, help="(b) bisection steps at the edge")
    parser.add_argument("--sources", type=int, default=1, help="(b) subscriber addresses")
    parser.add_argument("--switch-interval", type=float, default=GIL_SWITCH_INTERVAL,
                        help="(a) GIL switch interval, s (default: the daemon's)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter steps")
    parser.add_argument("--no-lab", action="store_true", help="skip (b)")
    parser.add_argument("--no-inprocess", action="store_true", help="skip (a)")
    opts = parser.parse_args(args)
    if opts.quick:
        opts.decisions, opts.rounds, opts.seconds, opts.refine = 10_000, 3, 3.0, 1
    print("command: " + shlex.join([sys.executable, *sys.argv]), flush=True)
    if not opts.no_inprocess:
        sys.setswitchinterval(opts.switch_interval)
        print(in_process_report(in_process(opts.decisions, opts.rounds), opts.decisions,
                                opts.rounds), flush=True)  # fmt: skip
    if not opts.no_lab:
        rates = [int(rate) for rate in opts.rates.split(",")]
        figures = in_lab(rates, opts.seconds, opts.sources, opts.refine)
        print(lab_report(figures, opts.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
