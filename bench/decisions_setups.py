"""The set-ups of the decision benchmark (see decisions_lab.py for the lab and the step).

- `KernelOnly`: the 3-rule policy as iptables rules in FORWARD (every new SYN to port 25), the
  business list as ipsets (hash:net, IPv4 and IPv6), no queue;
- `Floor`: bench/floor.py behind portguard's own iptables hook for the benchmark's config (the
  hook backend's `install` in the gateway namespace: the same rules the daemon installs);
- `Portguard`: the real daemon (LabDaemon) with the 3-rule policy, `workers = N`, the file
  output and optionally a TCP syslog output to rsyslog or to the stream collector (raw frames,
  next to no CPU: lab/streamcollector.py) in the gateway, flood control at its
  default. `[queue] per_source` is off (it would drop most of these SYNs before any decision)
  and the hook backend is iptables, as for the floor, so the kernel's work is the same.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.cpushare import children
from bench.decisions_lab import (
    DECISION_TEXT,
    STREAM_PORT,
    SYSLOG_PORT,
    BenchLab,
    Events,
    ipset_name,
    read_events,
)
from bench.measure import settle
from lab import addresses as a
from lab.collector import Collector
from lab.daemon import LabDaemon, render_config
from lab.netns import LabError
from lab.peers import python_env
from lab.streamcollector import StreamCollector
from lab.topology import terminate
from portguard.config.model import parse_config
from portguard.io.hooks.iptables import IptablesBackend
from portguard.io.hooks.runner import CommandResult, run_command
from portguard.service.hookspec import hook_spec

_NEW_SYN = "-p tcp -m tcp --dport 25 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW"
SUBSCRIBERS = {"iptables": "100.64.0.0/10", "ip6tables": "2001:db8:64::/48"}
SMARTHOST = {"iptables": a.SMARTHOST.v4, "ip6tables": a.SMARTHOST.v6}


def kernel_rules(family: str) -> list[str]:
    """POLICY as iptables rules (the business set an ipset), for `-A`/`-D` FORWARD."""
    return [
        f"FORWARD {_NEW_SYN} -s {SUBSCRIBERS[family]} -d {SMARTHOST[family]} -j ACCEPT",
        f"FORWARD {_NEW_SYN} -m set --match-set {ipset_name(family)} src -j ACCEPT",
        f"FORWARD {_NEW_SYN} -j REJECT --reject-with tcp-reset",
    ]


class KernelOnly:
    """The 3-rule policy in the kernel: iptables rules and ipsets, no queue."""

    name, queues = "kernel-only iptables + ipset", 0

    def __init__(self, bench: BenchLab) -> None:
        self.bench = bench

    def _rules(self, verb: str) -> None:
        for family in ("iptables", "ip6tables"):
            for rule in kernel_rules(family):
                self.bench.run("gw", family, "-w", verb, *rule.split())

    def enter(self) -> None:
        self._rules("-A")

    def leave(self) -> None:
        self._rules("-D")


BENCH_EDITS = (('{ type = "stdout" }, ', ""), ("[queue]\n", "[queue]\nper_source = false\n"))


def for_benchmark(text: str) -> str:
    """A lab daemon config (lab.daemon.render_config) without the stdout output and with the
    kernel's per-source SYN limit off: a few clients would otherwise see most of their SYNs
    dropped before the queue, uncounted by its counters."""
    for old, new in BENCH_EDITS:
        if old not in text:
            raise LabError(f"lab.daemon.render_config changed: no {old!r} in the config")
        text = text.replace(old, new, 1)
    return text


def bench_config(rules: Path, workers: int, syslog: bool, directory: Path,
                 port: int = SYSLOG_PORT) -> str:  # fmt: skip
    """The daemon's config for the benchmark: `for_benchmark`, the iptables backend, the file
    output in `directory`, and a syslog output to a collector on `port` if asked."""
    extra = [f'{{ type = "syslog", address = "tcp://127.0.0.1:{port}" }}'] if syslog else []
    text = render_config([rules], directory / "decisions.jsonl", workers=workers,
                         backend="iptables", extra_outputs=extra)  # fmt: skip
    return for_benchmark(text)


class Floor:
    """bench/floor.py behind portguard's iptables hook for the benchmark's config."""

    name, queues = "floor: python-netfilterqueue, parse + mark + repeat", 1

    def __init__(self, bench: BenchLab) -> None:
        self.bench = bench
        config = bench_config(bench.rules, 1, False, bench.lab.workdir)
        spec = hook_spec(parse_config(config, bench.lab.workdir / "floor.toml"))
        self.spec, self.hook = spec, IptablesBackend(self._in_gateway)
        self.proc: subprocess.Popen[str] | None = None
        self.packets: list[int] = []

    def _in_gateway(self, argv: Sequence[str], stdin: str | None) -> CommandResult:
        return run_command(self.bench.lab.argv("gw", argv), stdin)

    def enter(self) -> None:
        self.hook.install(self.spec)
        argv = self.bench.lab.python("bench.floor", "--queue", str(self.spec.queue_num))
        self.proc = self.bench.lab.popen("gw", argv, stdout=subprocess.PIPE, text=True,
                                         env=python_env())  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise LabError("bench.floor did not start")

    def processes(self) -> dict[str, int]:
        """Its processes by role, for the CPU phase."""
        assert self.proc is not None, "processes() outside enter/leave"
        return {"packet loop": self.proc.pid}

    def leave(self) -> None:
        """Stop the floor (its packet count kept), then remove the hook; also after a failed
        `enter`."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                proc.terminate()
                try:
                    out, _ = proc.communicate(timeout=10)
                finally:
                    terminate(proc)  # SIGKILL if it is still there
                self.packets.append(int(json.loads(out.strip().splitlines()[-1])["packets"]))
        finally:
            self.hook.remove()


@dataclass
class Portguard:
    """The daemon: `workers`, the file output, and a TCP syslog output when `syslog`: to
    rsyslog, or to the stream collector when `stream`."""

    bench: BenchLab
    workers: int = 1
    syslog: bool = False
    stream: bool = False
    daemon: LabDaemon | None = field(default=None, init=False)
    _collected: tuple[int, int] = field(default=(0, 0), init=False)  # messages, bytes before
    _collector: Collector | StreamCollector | None = field(default=None, init=False)

    @property
    def name(self) -> str:
        outputs = "file + syslog TCP" if self.syslog else "file"
        if self.syslog and self.stream:
            outputs += " (stream collector)"
        return f"portguard, workers = {self.workers}, {outputs}"

    @property
    def queues(self) -> int:
        return self.workers

    def enter(self) -> None:
        daemon = LabDaemon(self.bench.lab, [self.bench.rules], workers=self.workers)
        port = STREAM_PORT if self.stream else SYSLOG_PORT
        daemon.config.write_text(
            bench_config(self.bench.rules, self.workers, self.syslog, daemon.dir, port)
        )
        self.daemon = daemon
        if self.syslog:
            collector: Collector | StreamCollector = (
                self.bench.start_stream_collector() if self.stream else self.bench.start_collector()
            )
            self._collector = collector
            self._collected = collector.count(), decisions_mark(collector)
        daemon.start(timeout=120)

    def processes(self) -> dict[str, int]:
        """Its processes by role, for the CPU phase (one worker: the daemon's process is the
        packet loop, its child the log process)."""
        assert self.daemon is not None and self.daemon.proc is not None, "not running"
        if self.workers != 1:
            raise LabError("the CPU phase measures workers = 1")
        pid = self.daemon.proc.pid
        return {"packet loop": pid, "log process": children(pid)[0]}

    def leave(self) -> Events:
        """Stop the daemon (also after a failed `enter`) and read its counters."""
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            raise LabError(f"{self.name}: not running")
        code = daemon.stop(grace=60)
        if code != 0:
            raise LabError(f"portguard exited with {code}:\n{daemon.stderr_tail()}")
        events = read_events(daemon.events_path)
        syslog = events.output("syslog")
        collector = self._collector
        if collector is None or syslog is None:
            return events
        messages, mark = self._collected
        settle(collector.count, messages + syslog.written, quiet=2.0, limit=120)
        return replace(events, at_collector=decisions_since(collector, mark))


def decisions_mark(collector: Collector | StreamCollector) -> int:
    """Where the decisions a collector receives from now on start: rsyslog's output file's
    size, the stream collector's count."""
    if isinstance(collector, StreamCollector):
        return collector.marked()
    return collected_bytes(collector.output)


def decisions_since(collector: Collector | StreamCollector, mark: int) -> int:
    """Decision events the collector received since `mark` (`decisions_mark`)."""
    if isinstance(collector, StreamCollector):
        return collector.marked() - mark
    with collector.output.open("rb") as written:
        written.seek(mark)
        return written.read().count(DECISION_TEXT)


def collected_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
