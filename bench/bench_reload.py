"""Reload of a large policy in the running daemon, and what deciding costs meanwhile.

Builds the namespace lab, writes a rule file whose `business` set comes from a list file of
N CIDRs (IPv4 and IPv6 mixed, the lab's business range among them), starts the daemon, and
measures in the same run:
  * `portguard reload` wall time (the CLI's round trip: load aside, swap, answer),
  * connection set-up time (median and worst) on the hooked port 25 while nothing reloads,
    and while the reload thread is loading the big list in the daemon.
Run as root:  sudo .venv/bin/python bench/bench_reload.py [--cidrs 1000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon

TOOL = str(Path(__file__).resolve().parent / "tcpbulk.py")
RULES = """
[sets.business]
files = ["business.txt"]

[[rule]]
id = "business-25"
src = "business"
dport = [25]
action = "allow"

[[rule]]
id = "block-25"
dport = [25]
action = "reject"
"""


def write_list(path: Path, count: int) -> None:
    lines = ["203.0.113.0/24", "2001:db8:b12::/48"]
    for n in range(count - 2):
        if n % 2:
            lines.append(f"2001:db8:{(n >> 16) & 0xFFFF:x}:{n & 0xFFFF:x}::/64")
        else:
            lines.append(
                f"{10 + (n >> 22) % 90}.{(n >> 14) & 255}.{(n >> 6) & 255}.{(n & 63) << 2}/30"
            )
    path.write_text("\n".join(lines) + "\n")


def setups(lab: Lab, count: int) -> list[float]:
    argv = [sys.executable, TOOL, "connect", a.MX.v4, "25", str(count)]
    proc = lab.run("biz", argv, capture_output=True, text=True, timeout=600, check=True)
    return [float(x) for x in json.loads(proc.stdout)["connect_us"]]


def reload_seconds(config: Path) -> float:
    started = time.perf_counter()
    argv = [sys.executable, "-m", "portguard", "reload", "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cidrs", type=int, default=1_000_000)
    parser.add_argument("--connects", type=int, default=300)
    args = parser.parse_args()
    with Lab() as lab:
        rules_dir = lab.workdir / "rules"
        rules_dir.mkdir()
        write_list(rules_dir / "business.txt", args.cidrs)
        (rules_dir / "10-bench.toml").write_text(RULES)
        server = lab.popen("net", [sys.executable, TOOL, "serve", a.MX.v4, "25"],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        started = time.perf_counter()
        daemon = LabDaemon(lab, rules=[rules_dir])
        daemon.start(timeout=600)
        start_s = time.perf_counter() - started
        try:
            quiet = setups(lab, args.connects)
            with (rules_dir / "business.txt").open("a") as changed:  # a real re-parse
                changed.write("192.0.2.128/25\n")
            reloads: list[float] = []
            worker = threading.Thread(target=lambda: reloads.append(reload_seconds(daemon.config)))
            worker.start()
            during = []
            while worker.is_alive():
                during += setups(lab, 20)
            worker.join()
        finally:
            daemon.stop()
    print(f"list of {args.cidrs:,} CIDRs; daemon start (load + bind + hooks): {start_s:.1f} s")
    print(f"portguard reload round trip (the list changed): {reloads[0]:.1f} s")
    for name, figures in (("quiet", quiet), ("during the reload", during)):
        print(f"connection set-up {name:18}: median {statistics.median(figures):7.0f} µs, "
              f"worst {max(figures):8.0f} µs ({len(figures)} connections)")  # fmt: skip
    ratio = statistics.median(during) / statistics.median(quiet)
    print(f"ratio of medians (during / quiet): {ratio:.2f}")


if __name__ == "__main__":
    main()
