"""The gate's cost per SYN in process (no kernel), against the floor's parse as the baseline.

`Gate.handle` on an allowed SYN (subscriber -> smarthost:25, rule `smarthost`) and a rejected
one (subscriber -> MX:25, rule `block-25`) under the shipped rules, then with a fan-out
detector added (`[detect.fanout]`, distinct 20: every deny is counted), against
`bench.floor.parse` (the bare-queue floor's own struct parse of the same packet) measured in
the same run. Best of `--rounds` rounds of `--count` SYNs; µs per SYN and the ratio.

    .venv/bin/python bench/bench_gate.py [--count 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.floor import parse
from portguard.core.events.record import Observer
from portguard.core.gate import Gate
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import RULES_DIR
from tests.strategies import PacketSpec

SUBSCRIBER, MX, SMARTHOST = 0x64400A0A, 0xC6336419, 0xC633641A
DETECTOR = """[detect.fanout]
dport = [25]
distinct = 20
window = "10m"
action = "alert"
"""


def syn(dst: int, sport: int) -> bytes:
    return PacketSpec(4, SUBSCRIBER, dst, sport, 25, 2, 1000, 0, 64240, 64).to_bytes()


def best(run: Callable[[bytes, float], object], data: list[bytes], rounds: int) -> float:
    """µs per call, the best of `rounds` passes over `data`."""
    found = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i, packet in enumerate(data):
            run(packet, 1000.0 + i * 1e-4)
        found.append((time.perf_counter() - started) / len(data) * 1e6)
    return min(found)


def outbound(decider: Gate) -> Callable[[bytes, float], object]:
    """The gate deciding an outbound SYN (leaves through the WAN)."""
    handle = decider.handle
    return lambda packet, now: handle(packet, False, True, now)


def gate(paths: Sequence[Path]) -> Gate:
    return Gate(load_ruleset(list(paths)), Observer("bench", "0"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "20-detect.toml").write_text(DETECTOR)
        detecting = [RULES_DIR, Path(directory)]
        allowed = [syn(SMARTHOST, 1024 + n % 60000) for n in range(args.count)]
        rejected = [syn(MX, 1024 + n % 60000) for n in range(args.count)]
        baseline = best(lambda packet, now: parse(packet), allowed, args.rounds)
        rows = [("floor's parse (baseline)", baseline)]
        for label, paths, data in (
            ("Gate.handle, allowed", [RULES_DIR], allowed),
            ("Gate.handle, rejected", [RULES_DIR], rejected),
            ("Gate.handle, allowed, with a detector", detecting, allowed),
            ("Gate.handle, rejected, with a detector", detecting, rejected),
        ):
            rows.append((label, best(outbound(gate(paths)), data, args.rounds)))
    print("| per SYN | µs | ratio |\n|---|---:|---:|")
    for label, micros in rows:
        print(f"| {label} | {micros:.2f} | {micros / baseline:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
