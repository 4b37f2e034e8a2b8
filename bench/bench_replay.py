"""`portguard replay` throughput against a bare scapy read of the same capture, same run.

    .venv/bin/python bench/bench_replay.py [--packets N] [--syn-share S] [--repeat R]

Writes a pcap (Ethernet) of N packets, S of them SYNs to hooked ports from 2,000 subscribers
and 500 business hosts (the shipped rules decide them: reject, smarthost, business, submission),
the rest ACK segments of established connections, one packet every 10 µs of capture time. Then
times, best of R rounds each:

- baseline: scapy's RawPcapReader over the file, nothing else (the floor of any replay);
- replay, table: `portguard replay` as `--format table` runs it (frames, link layer, filter,
  gate, totals);
- replay, json: as `--format json` runs it (also each event built, flood control, rendered).

Prints packets/s and SYN decisions/s of each and the ratio of each replay to the baseline.
"""

from __future__ import annotations

import argparse
import io
import random
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader

from portguard.cli.replay import _print_events
from portguard.core.events.record import Observer
from portguard.core.gate import Gate
from portguard.core.policy.addresses import AddressSet, parse_network
from portguard.core.replay import Replayer, decisions
from portguard.io.capture import Capture
from portguard.io.policyfiles import load_ruleset
from portguard.log.eventflow import EventFlow
from portguard.shipped import RULES_DIR

SUBSCRIBERS, BUSINESS = 2000, 500
DESTINATIONS = [("198.51.100.25", 25), ("198.51.100.26", 25), ("198.51.100.27", 587)]
INSIDE = ("100.64.0.0/10", "203.0.113.0/24")
STEP = 10e-6  # seconds of capture time between packets


def frame_template(dst: str, dport: int, flags: str) -> bytes:
    options = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)] if flags == "S" else []
    tcp = TCP(sport=40000, dport=dport, flags=flags, seq=1, window=64240, options=options)
    return bytes(Ether() / IP(src="100.64.0.1", dst=dst) / tcp)


def write_capture(path: Path, packets: int, syn_share: float, seed: int = 7) -> int:
    """The capture; returns how many SYNs it holds."""
    rng = random.Random(seed)
    syns = [frame_template(dst, port, "S") for dst, port in DESTINATIONS]
    acks = [frame_template(dst, port, "A") for dst, port in DESTINATIONS]
    sources = [0x64400000 + i for i in range(1, SUBSCRIBERS + 1)]
    sources += [0xCB007100 + i for i in range(1, BUSINESS + 1)]  # 203.0.113.0/24
    count = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for number in range(packets):
            is_syn = rng.random() < syn_share
            frame = bytearray(rng.choice(syns if is_syn else acks))
            struct.pack_into("!I", frame, 26, rng.choice(sources))  # IPv4 source
            struct.pack_into("!H", frame, 34, rng.randrange(1024, 65536))  # TCP source port
            struct.pack_into("!I", frame, 38, rng.getrandbits(32))  # sequence number
            count += is_syn
            moment = number * STEP
            sec, usec = int(moment), round(moment % 1 * 1e6)
            out.write(struct.pack("<IIII", 1795798800 + sec, usec, len(frame), len(frame)))
            out.write(frame)
    return count


def best_of(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    """The shortest of `repeat` runs (seconds) and what the run returned."""
    best, result = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def bare_scapy(path: Path) -> int:
    with RawPcapReader(str(path)) as reader:
        return sum(1 for _ in reader)


def replayer() -> Replayer:
    inside = AddressSet.from_networks("inside", [parse_network(c) for c in INSIDE])
    gate = Gate(load_ruleset([RULES_DIR]), Observer("bench", "0"))
    return Replayer(gate, inside, frozenset({25, 465, 587}))


def replay_table(path: Path) -> int:
    replay = replayer()
    with Capture.open(path) as capture:
        totals = Counter((d.rule_id, d.verdict) for d in decisions(capture.frames(print), replay))
    return sum(totals.values())


def replay_json(path: Path) -> int:
    replay = replayer()
    sink = io.TextIOWrapper(io.BytesIO())  # no disk: rendering is what is measured
    with Capture.open(path) as capture:
        _print_events(capture.frames(print), replay, EventFlow(replay.gate.observer, 60), sink)
    return replay.counts.decided


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--syn-share", type=float, default=0.10)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best one counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.pcap"
        syns = write_capture(path, args.packets, args.syn_share)
        size = path.stat().st_size / 1e6
        print(f"capture: {args.packets:,} packets, {syns:,} SYNs, {size:.0f} MB")
        base, read = best_of(args.repeat, lambda: bare_scapy(path))
        assert read == args.packets
        print(f"{'run':22} {'seconds':>8} {'packets/s':>11} {'SYNs/s':>9} {'vs scapy':>9}")
        print(f"{'scapy RawPcapReader':22} {base:8.2f} {args.packets / base:11,.0f} {'':>9} "
              f"{1.0:8.2f}x")  # fmt: skip
        for name, run in (("replay --format table", replay_table),
                          ("replay --format json", replay_json)):  # fmt: skip
            took, decided = best_of(args.repeat, lambda run=run: run(path))  # type: ignore[misc]
            assert decided == syns, (decided, syns)
            print(f"{name:22} {took:8.2f} {args.packets / took:11,.0f} {decided / took:9,.0f} "
                  f"{took / base:8.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
