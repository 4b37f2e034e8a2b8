"""The lab of the decision benchmark: its policy, the prepared lab, and one measured step.

A business customer (203.0.113.0/24, on a 100,000-prefix list) sends SYNs to the MX's port 25
in the internet namespace, where nothing listens: the MX answers each with a RST. The gateway
decides each SYN in one of the set-ups of decisions_setups.py (`SetUp`: `enter` before a step,
`leave` after it, with the daemon's counters when there is a daemon).

A step (`measure_step`) runs the clients (lab.synflood through bench/synclient.py, each with
its own source addresses) at a total rate and counts, with a rule counter in the internet
namespace, the SYNs that reached the MX: by the time the clients stopped (the rate) and in all
(what was lost). Between steps the gateway's conntrack table is flushed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.bench_reload import write_list
from bench.measure import rule_packets, settle
from lab import addresses as a
from lab.collector import Collector
from lab.netns import LabError
from lab.peers import python_env
from lab.streamcollector import StreamCollector
from lab.topology import Lab, terminate
from portguard.io.ctevents import ACCOUNTING

PREFIXES = 100_000  # the business list (IPv4 and IPv6, bench_reload.write_list)
CLIENT_FIRST = 100  # clients send from 203.0.113.CLIENT_FIRST and up (business space)
SOURCES_PER_CLIENT = 8  # so no (address, port) pair repeats within a step
TARGET = a.MX.v4  # nothing listens on its port 25 in the lab unless asked: it answers RST
SYN_COUNTER = "pg-bench-syns"  # the comment of the counting rule in the internet namespace
IPSET = "pg-bench-business"
SYSLOG_PORT = 5514
STREAM_PORT = 5515  # the stream collector's
DECISION = b'"portguard.decision"'  # in every decision event (ECS event.dataset)
DECISION_TEXT = b"portguard.decision"  # ... also where the event is a string (rsyslog's JSON)
LIFECYCLE = b'"portguard.lifecycle"'

POLICY = """# the decision benchmark's 3-rule policy (bench/decisions_lab.py)
[sets.business]
files = ["business.txt"]

[sets.subscribers]
cidrs = ["100.64.0.0/10", "2001:db8:64::/48"]

[sets.smarthosts]
cidrs = ["198.51.100.26", "2001:db8:25::26"]

[[rule]]
id = "smarthost"
src = "subscribers"
dst = "smarthosts"
dport = 25
action = "allow"

[[rule]]
id = "business-25"
src = "business"
dport = 25
action = "allow"

[[rule]]
id = "block-25"
dport = 25
action = "reject"
"""
_SYN = "-p tcp -m tcp --dport 25 --tcp-flags FIN,SYN,RST,ACK SYN"


def ipset_name(family: str) -> str:
    return f"{IPSET}{'6' if family == 'ip6tables' else '4'}"


def ipset_script(prefixes: Sequence[str]) -> str:
    """`ipset restore` input: the business list in two hash:net sets, one per family."""
    size = max(65536, 2 * len(prefixes))
    lines = [
        f"create {ipset_name(family)} hash:net family {inet} maxelem {size}"
        for family, inet in (("iptables", "inet"), ("ip6tables", "inet6"))
    ]
    for prefix in prefixes:
        lines.append(f"add {ipset_name('ip6tables' if ':' in prefix else 'iptables')} {prefix}")
    return "\n".join(lines) + "\n"


def write_policy(directory: Path, prefixes: int = PREFIXES) -> Path:
    """The rules directory: POLICY and its business list of `prefixes` prefixes."""
    directory.mkdir(parents=True, exist_ok=True)
    write_list(directory / "business.txt", prefixes)
    (directory / "10-bench.toml").write_text(POLICY)
    return directory


def client_sources(client: int) -> str:
    """The first of client number `client`'s SOURCES_PER_CLIENT addresses."""
    return f"203.0.113.{CLIENT_FIRST + client * SOURCES_PER_CLIENT}"


@dataclass(frozen=True, slots=True)
class Flood:
    """What the clients of one step did together."""

    asked: int  # total SYNs a second asked for
    sent: int
    errors: int  # failed sends (not in `sent`)
    seconds: float  # from the first client's start to the last one's end
    late: float = 0.0  # how late the last client started (Python start-up on a busy machine)

    @property
    def offered(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class BenchLab:
    """A Lab prepared for the benchmark: client addresses, the SYN counter, conntrack settings,
    the policy files and the ipsets; a rsyslog collector and a stream collector in the
    gateway when asked for."""

    def __init__(self, lab: Lab, prefixes: int = PREFIXES, clients: int = 4) -> None:
        self.lab, self.clients = lab, clients
        self.rules = write_policy(lab.workdir / "rules", prefixes)
        self.collector: Collector | None = None
        self.stream_collector: StreamCollector | None = None
        for client in range(clients):
            first = int(client_sources(client).rsplit(".", 1)[1])
            for host in range(first, first + SOURCES_PER_CLIENT):
                self.run("biz", "ip", "addr", "add", f"203.0.113.{host}/32", "dev", a.BIZ_IF)
        self.run("net", "iptables", "-w", "-A", "INPUT", "-d", TARGET, *_SYN.split(),
                 "-m", "comment", "--comment", SYN_COUNTER)  # fmt: skip
        # the conntrack settings the daemon makes (flow-end events), for every set-up alike
        self.run("gw", "sysctl", "-q", "-w", *[f"{key}=1" for key in ACCOUNTING])
        prefixes_text = (self.rules / "business.txt").read_text().split()
        self.lab.run("gw", ["ipset", "restore"], input=ipset_script(prefixes_text), text=True,
                     check=True, capture_output=True)  # fmt: skip

    def run(self, ns: str, *argv: str, stdin: str | None = None) -> str:
        proc = self.lab.run(ns, list(argv), input=stdin, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
        if proc.returncode != 0:
            raise LabError(f"{ns}: {' '.join(argv)}: {proc.stderr.strip()}")
        return str(proc.stdout)

    def arrived(self) -> int:
        """SYNs that reached the MX so far (the counting rule in the internet namespace)."""
        return rule_packets(self.run("net", "iptables", "-w", "-v", "-S", "INPUT"), SYN_COUNTER)

    def queue_lost(self, queues: int) -> int:
        """Packets the gateway's queues 0..queues-1 dropped (queue full, socket full)."""
        total = 0
        for queue in range(queues):
            row = self.lab.queue_stats(queue) or {}
            total += row.get("queue_dropped", 0) + row.get("user_dropped", 0)
        return total

    def flush_conntrack(self) -> None:
        """Forget the last step's connections (CLOSE entries live 10 s)."""
        self.lab.run("gw", ["conntrack", "-F"], capture_output=True, timeout=60)

    def flood(self, rate: int, seconds: float, start_in: float = 2.0) -> Flood:
        """The clients together at `rate` SYNs a second for `seconds`, starting together."""
        at = time.monotonic() + start_in
        share = max(1, rate // self.clients)
        procs = [
            self.lab.popen("biz", self.lab.python(
                "bench.synclient", "--at", f"{at:.6f}", "--src", client_sources(client),
                "--dst", TARGET, "--dport", "25", "--rate", str(share), "--seconds", str(seconds),
                "--sources", str(SOURCES_PER_CLIENT)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
            for client in range(self.clients)
        ]  # fmt: skip
        results = [json_result(proc, start_in + seconds + 60) for proc in procs]
        return together(share * self.clients, results)

    def start_collector(self) -> Collector:
        if self.collector is None:
            workdir = self.lab.workdir / "rsyslog"
            workdir.mkdir()
            self.collector = Collector(workdir, self.lab.argv("gw", []), port=SYSLOG_PORT)
            self.collector.start()
        return self.collector

    def start_stream_collector(self) -> StreamCollector:
        """lab/streamcollector.py in the gateway, on STREAM_PORT: a collector that costs the
        shared cores next to nothing (a SIEM's collector runs on a machine of its own)."""
        if self.stream_collector is None:
            workdir = self.lab.workdir / "stream"
            workdir.mkdir()
            argv = self.lab.argv("gw", [])
            collector = StreamCollector(workdir, argv, STREAM_PORT, DECISION_TEXT)
            collector.start()
            self.stream_collector = collector
        return self.stream_collector

    def close(self) -> None:
        if self.collector is not None:
            self.collector.stop()
        if self.stream_collector is not None:
            self.stream_collector.stop()


def json_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The JSON lines a client printed, merged; RuntimeError when it failed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate(proc)
        raise RuntimeError("a client did not finish in time") from None
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"a client failed ({proc.returncode}): {err.strip()[-500:]}")
    merged: dict[str, Any] = {}
    for line in out.strip().splitlines():
        merged.update(json.loads(line))
    return merged


def together(asked: int, results: Sequence[dict[str, Any]]) -> Flood:
    """The clients' results (bench.synclient's lines) as one flood: what they sent, over the
    time from the first start to the last end (a client that started late widens it)."""
    starts = [float(r.get("late", 0.0)) for r in results]
    ends = [start + float(r["seconds"]) for start, r in zip(starts, results, strict=True)]
    return Flood(asked, sum(int(r["sent"]) for r in results),
                 sum(int(r["errors"]) for r in results), max(ends) - min(starts),
                 max(starts))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Output:
    """One log output's counters from the stop events (summed over workers)."""

    name: str
    submitted: int
    written: int
    dropped: int


@dataclass(frozen=True, slots=True)
class Events:
    """What the daemon decided and logged in one step (its stop events and its file)."""

    decided: int  # packets the workers decided (`packets` of the stop events)
    in_file: int  # decision events in the file
    handoff_dropped: int  # records the hand-over to the log processes dropped
    outputs: tuple[Output, ...] = ()
    at_collector: int | None = None  # decision events rsyslog wrote (file + syslog set-up)

    def output(self, prefix: str) -> Output | None:
        return next((o for o in self.outputs if o.name.startswith(prefix)), None)


class SetUp(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def queues(self) -> int:
        """How many kernel queues it reads (0: none)."""
        ...

    def enter(self) -> None: ...

    def leave(self) -> Events | None: ...


def read_events(path: Path) -> Events:
    """Decisions and output counters from the daemon's file: the stop events (one a worker)
    and the number of decision events."""
    data = path.read_bytes()
    stops = [json.loads(line) for line in data.splitlines()
             if LIFECYCLE in line and b'"stop"' in line]  # fmt: skip
    stops = [s["portguard"] for s in stops if s["event"]["action"] == "stop"]
    outputs: dict[str, list[int]] = {}
    for stop in stops:
        for sink in stop.get("sinks", ()):
            name = str(sink["name"]).split(":", 1)[0]
            totals = outputs.setdefault(name, [0, 0, 0])
            for n, key in enumerate(("submitted", "written", "dropped")):
                totals[n] += int(sink[key])
    return Events(
        decided=sum(int(s.get("packets", 0)) for s in stops),
        in_file=data.count(DECISION),
        handoff_dropped=sum(int(s.get("handoff_dropped", 0)) for s in stops),
        outputs=tuple(Output(name, *totals) for name, totals in outputs.items()),
    )


@dataclass(frozen=True, slots=True)
class Round:
    """One measured step of one set-up."""

    flood: Flood
    arrived_in_run: int  # SYNs at the MX when the clients stopped
    arrived: int  # ... once nothing more came
    queue_lost: int
    events: Events | None

    @property
    def lost(self) -> int:
        return self.flood.sent - self.arrived

    @property
    def events_dropped(self) -> int:
        """Events the daemon dropped (hand-over and outputs; 0 for a set-up that logs nothing):
        deciding faster than the log is written is not keeping up."""
        if self.events is None:
            return 0
        return self.events.handoff_dropped + sum(o.dropped for o in self.events.outputs)

    @property
    def kept_up(self) -> bool:
        return self.lost == 0 and self.events_dropped == 0

    @property
    def decisions_per_s(self) -> float:
        seconds = self.flood.seconds
        return min(self.arrived_in_run, self.flood.sent) / seconds if seconds > 0 else 0.0


def measure_step(bench: BenchLab, setup: SetUp, rate: int, seconds: float,
                 settle_s: float) -> Round:  # fmt: skip
    """One step: enter the set-up, let it settle, flood, count, leave, forget conntrack."""
    with entered(bench, setup) as events:
        time.sleep(settle_s)
        first = bench.arrived()
        lost_before = bench.queue_lost(setup.queues)
        flood = bench.flood(rate, seconds)
        in_run = bench.arrived() - first
        arrived = settle(lambda: bench.arrived() - first, flood.sent, quiet=1.0, limit=30)
        queue_lost = bench.queue_lost(setup.queues) - lost_before
    return Round(flood, in_run, arrived, queue_lost, events[0] if events else None)


@contextlib.contextmanager
def entered(bench: BenchLab, setup: SetUp) -> Iterator[list[Events]]:
    """The set-up entered for the block; left afterwards (its events in the list) whatever
    happens, and conntrack flushed. A failed `enter` is undone by `leave` (which must cope
    with a half-entered set-up) and re-raised."""
    found: list[Events] = []
    try:
        setup.enter()
    except BaseException:
        with contextlib.suppress(Exception):  # undo what a half-done enter did
            setup.leave()
        bench.flush_conntrack()
        raise
    try:
        yield found
    finally:
        try:
            events = setup.leave()
            if events is not None:
                found.append(events)
        finally:
            bench.flush_conntrack()
