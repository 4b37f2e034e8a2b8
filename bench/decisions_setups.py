"""The set-ups of the decision benchmark (see decisions_lab.py for the lab and the step).

- `KernelOnly`: the 3-rule policy as iptables rules in FORWARD (every new SYN to port 25), the
  business list as ipsets (hash:net, IPv4 and IPv6), no queue;
- `Floor`: bench/floor.py behind portguard's own iptables hook for the benchmark's config (the
  hook backend's `install` in the gateway namespace: the same rules the daemon installs);
- `Portguard`: the real daemon (LabDaemon) with the 3-rule policy, `workers = N`, the file
  output and optionally a TCP syslog output to rsyslog in the gateway, flood control at its
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
    SYSLOG_PORT,
    BenchLab,
    Events,
    ipset_name,
    read_events,
)
from bench.measure import settle
from lab import addresses as a
from lab.daemon import LabDaemon, render_config
from lab.netns import LabError
from lab.peers import python_env
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


def bench_config(rules: Path, workers: int, syslog: bool, directory: Path) -> str:
    """The daemon's config for the benchmark: `for_benchmark`, the iptables backend, the file
    output in `directory`, and a syslog output to the lab's collector if asked."""
    extra = [f'{{ type = "syslog", address = "tcp://127.0.0.1:{SYSLOG_PORT}" }}'] if syslog else []
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
    """The daemon: `workers`, the file output, and a TCP syslog output when `syslog`."""

    bench: BenchLab
    workers: int = 1
    syslog: bool = False
    daemon: LabDaemon | None = field(default=None, init=False)
    _collected: tuple[int, int] = field(default=(0, 0), init=False)  # messages, bytes before

    @property
    def name(self) -> str:
        outputs = "file + syslog TCP" if self.syslog else "file"
        return f"portguard, workers = {self.workers}, {outputs}"

    @property
    def queues(self) -> int:
        return self.workers

    def enter(self) -> None:
        daemon = LabDaemon(self.bench.lab, [self.bench.rules], workers=self.workers)
        daemon.config.write_text(
            bench_config(self.bench.rules, self.workers, self.syslog, daemon.dir)
        )
        self.daemon = daemon
        if self.syslog:
            collector = self.bench.start_collector()
            self._collected = collector.count(), collected_bytes(collector.output)
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
        if self.bench.collector is None or syslog is None:
            return events
        messages, offset = self._collected
        settle(self.bench.collector.count, messages + syslog.written, quiet=2.0, limit=120)
        with self.bench.collector.output.open("rb") as written:
            written.seek(offset)
            decisions = written.read().count(DECISION_TEXT)
        return replace(events, at_collector=decisions)


def collected_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
