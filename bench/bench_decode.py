"""Header decoding cost: portguard's struct decoder against scapy dissection, same run.

    .venv/bin/python bench/bench_decode.py [--count N] [--repeat R]

Decodes a Linux-style IPv4 SYN and IPv6 SYN (MSS, SACK permitted, timestamps, NOP, window
scale) N times each way and prints microseconds per packet (the best of R rounds, so that
other load on the machine inflates the figures less) and the scapy/struct ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from portguard.core.packet import decode

OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (0xAABBCCDD, 0)), ("NOP", None),
           ("WScale", 7)]  # fmt: skip


def syn_packets() -> dict[str, tuple[bytes, Callable[[bytes], object]]]:
    tcp = TCP(sport=40312, dport=25, flags="S", seq=0x6B8B4567, window=64240, options=OPTIONS)
    v4 = bytes(IP(src="100.64.10.10", dst="198.51.100.25") / tcp)
    v6 = bytes(IPv6(src="2001:db8:64::10", dst="2001:db8:25::25") / tcp)
    return {"IPv4 SYN": (v4, IP), "IPv6 SYN": (v6, IPv6)}


def per_packet_us(parse: Callable[[bytes], object], data: bytes, count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(count):
            parse(data)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="packets per round (struct)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best one counts")
    args = parser.parse_args()
    scapy_count = max(1, args.count // 50)  # scapy is ~50-100x slower: keep the run short
    print(f"{'packet':10} {'struct µs':>10} {'scapy µs':>10} {'ratio':>7}")
    for name, (data, scapy_parse) in syn_packets().items():
        fast = per_packet_us(decode, data, args.count, args.repeat)
        slow = per_packet_us(scapy_parse, data, scapy_count, args.repeat)
        print(f"{name:10} {fast:10.2f} {slow:10.2f} {slow / fast:6.0f}x")


if __name__ == "__main__":
    main()
