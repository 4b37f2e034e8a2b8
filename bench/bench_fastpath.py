"""Kernel fast path benchmark: what portguard costs an allowed SMTP connection.

Builds the namespace lab and measures, in one run and the same lab:
  * bulk transfer (business customer -> external MX) in MB/s and
  * connection setup time (SYN to established, median µs)
in four set-ups: no firewall; a kernel-only iptables policy doing the same job (port 25
allowed for the business range, rejected for subscribers); portguard on the hooked port 25
(first packet through the daemon, the rest connmarked in the kernel); and portguard running
while the transfer uses the unhooked port 2525. Every figure is also given as a ratio to the
no-firewall baseline. Run as root:  sudo .venv/bin/python bench/bench_fastpath.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon

TOOL = str(Path(__file__).resolve().parent / "tcpbulk.py")
KERNEL_POLICY = [
    ["-A", "FORWARD", "-p", "tcp", "--dport", "25", "-s", "203.0.113.0/24", "-j", "ACCEPT"],
    ["-A", "FORWARD", "-p", "tcp", "--dport", "25", "-s", "100.64.0.0/10", "-j", "REJECT",
     "--reject-with", "tcp-reset"],
]  # fmt: skip


def tool(lab: Lab, ns: str, *args: str) -> dict[str, Any]:
    proc = lab.run(ns, [sys.executable, TOOL, *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return dict(json.loads(proc.stdout))


def transfer(lab: Lab, port: int, size: int) -> float:
    result = tool(lab, "biz", "send", a.MX.v4, str(port), str(size))
    assert result["bytes"] == size, result
    return size / float(result["seconds"]) / 1e6


def setup_us(lab: Lab, port: int, connects: int) -> float:
    return statistics.median(
        tool(lab, "biz", "connect", a.MX.v4, str(port), str(connects))["connect_us"]
    )


def interleaved(
    lab: Lab, setups: dict[str, tuple[int, Any, Any]], size: int, rounds: int, connects: int
) -> dict[str, dict[str, float]]:
    """Measure each set-up once per round, alternating, so drift hits them all alike."""
    rates: dict[str, list[float]] = {name: [] for name in setups}
    setup: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (port, enter, leave) in setups.items():
            enter()
            rates[name].append(transfer(lab, port, size))
            setup[name].append(setup_us(lab, port, connects // rounds))
            leave()
    return {
        name: {"mb_s": statistics.median(rates[name]), "connect_us": statistics.median(setup[name])}
        for name in setups
    }


def run(size: int, rounds: int, connects: int) -> dict[str, dict[str, float]]:
    def kernel_policy(action: str) -> Any:
        return lambda: [lab.run("gw", ["iptables", action, *rule[1:]], check=True)
                        for rule in KERNEL_POLICY]  # fmt: skip

    def nothing() -> None:
        return None

    with Lab() as lab:
        server = lab.popen("net", [sys.executable, TOOL, "serve", a.MX.v4, "25", "2525"],
                           stdout=-1, text=True)  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        figures = interleaved(lab, {
            "no firewall, port 25": (25, nothing, nothing),
            "kernel-only iptables policy, port 25": (25, kernel_policy("-A"), kernel_policy("-D")),
        }, size, rounds, connects)  # fmt: skip
        daemon = LabDaemon(lab)
        daemon.start()
        try:
            before = lab.queue_stats()
            figures |= interleaved(lab, {
                "portguard, hooked port 25": (25, nothing, nothing),
                "portguard, unhooked port 2525": (2525, nothing, nothing),
            }, size, rounds, connects)  # fmt: skip
            after = lab.queue_stats()
        finally:
            daemon.stop()
        assert before is not None and after is not None
        queued = after["id_sequence"] - before["id_sequence"]
        figures["portguard, hooked port 25"]["queued_packets"] = queued
    return figures


def report(figures: dict[str, dict[str, float]], size: int, rounds: int, connects: int) -> str:
    base = figures["no firewall, port 25"]
    lines = [
        f"bulk transfer {size / 1e6:.0f} MB x {rounds} rounds (median), "
        f"{connects} connection setups",
        f"{'set-up':40} {'MB/s':>8} {'ratio':>6} {'setup µs':>9} {'ratio':>6}",
    ]
    for name, fig in figures.items():
        lines.append(
            f"{name:40} {fig['mb_s']:8.0f} {fig['mb_s'] / base['mb_s']:6.2f} "
            f"{fig['connect_us']:9.0f} {fig['connect_us'] / base['connect_us']:6.2f}"
        )
    hooked = figures["portguard, hooked port 25"]
    unhooked = figures["portguard, unhooked port 2525"]
    lines.append(f"hooked port 25 / unhooked port 2525 with portguard running: "
                 f"{hooked['mb_s'] / unhooked['mb_s']:.2f} (bulk), "
                 f"{hooked['connect_us'] / unhooked['connect_us']:.2f} (setup)")  # fmt: skip
    transfers = rounds + (connects // rounds) * rounds
    lines.append(f"packets the daemon received for {transfers} port-25 connections: "
                 f"{hooked['queued_packets']:.0f}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="megabytes per transfer")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connects", type=int, default=200)
    args = parser.parse_args()
    size = args.mb * 1_000_000
    print(report(run(size, args.rounds, args.connects), size, args.rounds, args.connects))


if __name__ == "__main__":
    main()
