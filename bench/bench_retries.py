"""Bot retries benchmark: one source retrying a denied SYN to one MX at full rate.

In one lab and one run, the subscriber floods SYNs to the MX's port 25 (each from a new source
port: lab.synflood) against
  (a) a kernel-only iptables policy (REJECT with tcp-reset in FORWARD, no daemon),
  (b) portguard without the deny cache ([queue] deny_cache = 0),
  (c) portguard with it (deny_cache = 10),
and counts the RSTs that reach the subscriber (an iptables counter in its namespace). The
figure is SYNs answered a second, and its ratio to (a). portguard runs with the shipped rules
(block-25 rejects), per_source off (else the kernel drops the flood before the queue) and
flood control on. Run as root:  sudo .venv/bin/python bench/bench_retries.py [--rate N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon

KERNEL_POLICY = ["FORWARD", "-p", "tcp", "--dport", "25", "-s", "100.64.0.0/10", "-j", "REJECT",
                 "--reject-with", "tcp-reset"]  # fmt: skip
RST_COUNTER = ["INPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-s", a.MX.v4]


def rsts(lab: Lab) -> int:
    proc = lab.run("sub", ["iptables", "-v", "-x", "-n", "-L", "INPUT"], capture_output=True,
                   text=True, check=True)  # fmt: skip
    return sum(int(line.split()[0]) for line in proc.stdout.splitlines() if a.MX.v4 in line)


def flood(lab: Lab, rate: int, seconds: float) -> dict[str, float]:
    before = rsts(lab)
    argv = lab.python("lab.synflood", "--src", a.SUBSCRIBER.v4, "--dst", a.MX.v4, "--dport",
                      "25", "--rate", str(rate), "--seconds", str(seconds))  # fmt: skip
    proc = lab.run("sub", argv, capture_output=True, text=True, timeout=600, check=True)
    sent = json.loads(proc.stdout.strip().splitlines()[-1])
    time.sleep(1.0)  # the last answers come back
    answered = rsts(lab) - before
    return {"sent": sent["sent"], "offered_rate": round(sent["rate"]), "answered": answered,
            "answered_rate": round(answered / float(sent["seconds"]))}  # fmt: skip


def with_daemon(lab: Lab, cache: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    daemon = LabDaemon(lab, deny_cache=cache)
    text = daemon.config.read_text()
    daemon.config.write_text(text.replace("[queue]\n", "[queue]\nper_source = false\n", 1))
    daemon.start()
    try:
        return run()
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200_000, help="SYNs a second offered")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with Lab() as lab:
        lab.start_smtp_servers()
        lab.run("sub", ["iptables", "-I", *RST_COUNTER], check=True)
        run = lambda: flood(lab, args.rate, args.seconds)  # noqa: E731
        lab.run("gw", ["iptables", "-I", *KERNEL_POLICY], check=True)
        results["kernel-only"] = run()
        lab.run("gw", ["iptables", "-D", *KERNEL_POLICY], check=True)
        results["portguard, deny_cache = 0"] = with_daemon(lab, 0, run)
        results["portguard, deny_cache = 10"] = with_daemon(lab, 10, run)
    base = results["kernel-only"]["answered_rate"] or 1
    print("| set-up | SYNs sent | offered/s | answered (RST) | answered/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        print(f"| {name} | {row['sent']:.0f} | {row['offered_rate']:.0f} | {row['answered']:.0f}"
              f" | {row['answered_rate']:.0f} | {row['answered_rate'] / base:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
