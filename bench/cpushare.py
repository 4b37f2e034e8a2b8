"""CPU time per decision, per process and for the whole machine, from /proc (for the decision
benchmark's `cpu` phase): on a machine where the traffic generator shares the cores, the
decision rate is bounded by the CPU every part spends on a decision, so this says where the
difference to the floor goes. Pure parsing functions plus `Sample`, which reads /proc."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_times(stat: str) -> tuple[int, int, int]:
    """(parent pid, user ticks, system ticks) of a /proc/PID/stat line (the name may hold
    spaces and parentheses: fields are counted after the last ')')."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]), int(fields[12])


def busy_ticks(stat: str) -> int:
    """Ticks the machine's CPUs were not idle, from /proc/stat's first line."""
    values = [int(v) for v in stat.splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


def children(pid: int, proc: Path = PROC) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, _, _ = process_times((entry / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid:
            found.append(int(entry.name))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Sample:
    """User and system ticks of some named processes, and the machine's busy ticks."""

    processes: Mapping[str, tuple[int, int]]
    machine: int

    @staticmethod
    def take(pids: Mapping[str, int], proc: Path = PROC) -> Sample:
        found = {}
        for name, pid in pids.items():
            _, user, system = process_times((proc / str(pid) / "stat").read_text())
            found[name] = (user, system)
        return Sample(found, busy_ticks((proc / "stat").read_text()))


def per_decision(before: Sample, after: Sample, decisions: int,
                 hz: int | None = None) -> dict[str, object]:  # fmt: skip
    """µs of CPU a decision between two samples: each process's user and system time, and the
    whole machine's (every core, every process, the kernel's softirqs)."""
    scale = 1e6 / (hz or ticks()) / max(decisions, 1)
    processes = {
        name: {"user": (after.processes[name][0] - user) * scale,
               "system": (after.processes[name][1] - system) * scale}
        for name, (user, system) in before.processes.items()
    }  # fmt: skip
    return {"decisions": decisions, "machine": (after.machine - before.machine) * scale,
            "processes": processes}  # fmt: skip
