"""A paced TCP SYN generator for the lab: distinct connection attempts at a steady rate.

    python -m lab.synflood --src 100.64.10.10 --dst 198.51.100.25 --dport 25 \\
        --rate 20000 --seconds 30 [--sources N]

Run it inside a lab namespace (the subscriber one: `lab.popen("sub", lab.python(
"lab.synflood", ...))`); it needs a raw socket, so root. Every SYN is a connection
attempt of its own: its own source port (and, with `--sources N`, source address: N
consecutive addresses from `--src`, which the caller must have made routable, e.g. added to the
namespace's interface) and a random initial sequence number. Sources rotate first, then ports,
so a (source, port) pair comes back only after N x 64,512 attempts.

Packets come from a template whose checksums' constant parts are summed once per source, so a
SYN costs a few additions and one struct.pack. They are paced in batches every millisecond
(the SYNs due by then); after a late wake-up the generator catches up at most CATCH_UP
milliseconds' worth at a time, so a stall never becomes one big burst. At the end it prints
one JSON line: {"sent": n, "seconds": s, "rate": r, "errors": e} (errors: failed sends,
not counted in `sent`).

The header building is pure and checked against scapy in tests/unit/test_synflood.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

IPPROTO_TCP = 6
TTL = 64
WINDOW = 64240
SYN_FLAG = 0x02
DONT_FRAGMENT = 0x4000
MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460, the one option every client sends
TCP_LEN = 20 + len(MSS_OPTION)
DATA_OFFSET = (TCP_LEN // 4) << 4
IPV4_LEN = 20
FIRST_PORT = 1024
PORT_COUNT = 65536 - FIRST_PORT
TICK = 0.001  # seconds between batches
CATCH_UP = 4  # at most this many ticks' worth of SYNs in one batch

_IPV4 = struct.Struct("!BBHHHBBHII")  # version/IHL, TOS, length, id, DF, TTL, proto, sum, src, dst
_IPV6 = struct.Struct("!IHBB16s16s")  # version, payload length, next header, hop limit, src, dst
_TCP = struct.Struct("!HHIIBBHHH4s")  # ports, seq, ack, offset, flags, window, sum, urgent, MSS
_IPV4_SYN = struct.Struct("!" + _IPV4.format[1:] + _TCP.format[1:])
_IPV6_SYN = struct.Struct("!" + _IPV6.format[1:] + _TCP.format[1:])


def ones_sum(data: bytes) -> int:
    """The sum of `data` as big-endian 16-bit words (odd length: padded with a zero byte)."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def fold(total: int) -> int:
    """A ones' complement sum folded into 16 bits (carries added back in)."""
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    """The Internet checksum of `data` (RFC 1071)."""
    return ~fold(ones_sum(data)) & 0xFFFF


def pseudo_header(version: int, src: int, dst: int, length: int) -> bytes:
    """The header the TCP checksum covers besides the segment (RFC 9293, RFC 8200)."""
    if version == 4:
        return struct.pack("!IIBBH", src, dst, 0, IPPROTO_TCP, length)
    addresses = src.to_bytes(16, "big") + dst.to_bytes(16, "big")
    return addresses + struct.pack("!IxxxB", length, IPPROTO_TCP)


def tcp_header(sport: int, dport: int, seq: int, check: int = 0) -> bytes:
    """A SYN's TCP header with the MSS option, carrying checksum `check`."""
    return _TCP.pack(sport, dport, seq, 0, DATA_OFFSET, SYN_FLAG, WINDOW, check, 0, MSS_OPTION)


def tcp_syn(version: int, src: int, dst: int, sport: int, dport: int, seq: int) -> bytes:
    """A SYN's TCP header with its checksum computed over the pseudo header."""
    covered = pseudo_header(version, src, dst, TCP_LEN) + tcp_header(sport, dport, seq)
    return tcp_header(sport, dport, seq, checksum(covered))


def ipv4_header(
    src: int, dst: int, ident: int, payload_len: int, check: int | None = None
) -> bytes:
    """An IPv4 header (don't fragment, TTL 64, TCP) with its checksum (computed when None)."""
    length = IPV4_LEN + payload_len
    fields = (0x45, 0, length, ident, DONT_FRAGMENT, TTL, IPPROTO_TCP)
    if check is None:
        check = checksum(_IPV4.pack(*fields, 0, src, dst))
    return _IPV4.pack(*fields, check, src, dst)


def ipv6_header(src: int, dst: int, payload_len: int) -> bytes:
    """An IPv6 header (no extension headers, hop limit 64, TCP); IPv6 has no header checksum."""
    return _IPV6.pack(6 << 28, payload_len, IPPROTO_TCP, TTL, src.to_bytes(16, "big"),
                      dst.to_bytes(16, "big"))  # fmt: skip


def syn_packet(
    version: int, src: int, dst: int, sport: int, dport: int, seq: int, ident: int = 0
) -> bytes:
    """One whole SYN, built field by field (the reference the template must equal)."""
    tcp = tcp_syn(version, src, dst, sport, dport, seq)
    if version == 4:
        return ipv4_header(src, dst, ident, len(tcp)) + tcp
    return ipv6_header(src, dst, len(tcp)) + tcp


class SynTemplate:
    """Builds the SYNs of one run fast: the checksums' constant parts are summed once per
    source, so a packet costs a few additions and one struct.pack."""

    def __init__(self, version: int, sources: Sequence[int], dst: int, dport: int) -> None:
        if version not in (4, 6) or not sources:
            raise ValueError("need IP version 4 or 6 and at least one source")
        self.version, self.sources, self.dst, self.dport = version, list(sources), dst, dport
        pseudo = [pseudo_header(version, src, dst, TCP_LEN) for src in self.sources]
        self._tcp_sums = [ones_sum(p + tcp_header(0, dport, 0)) for p in pseudo]
        self._ip_sums = (
            [ones_sum(ipv4_header(src, dst, 0, TCP_LEN, 0)) for src in self.sources]
            if version == 4
            else []
        )
        self._v6 = [src.to_bytes(16, "big") for src in self.sources], dst.to_bytes(16, "big")

    def packet(self, source: int, sport: int, seq: int, ident: int = 0) -> bytes:
        """The SYN from the `source`-th address and port `sport`, with ISN `seq`."""
        total = self._tcp_sums[source] + sport + (seq >> 16) + (seq & 0xFFFF)
        total = (total & 0xFFFF) + (total >> 16)
        tcp_check = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
        tcp = (sport, self.dport, seq, 0, DATA_OFFSET, SYN_FLAG, WINDOW, tcp_check, 0, MSS_OPTION)
        if self.version == 6:
            srcs, dst = self._v6
            return _IPV6_SYN.pack(6 << 28, TCP_LEN, IPPROTO_TCP, TTL, srcs[source], dst, *tcp)
        total = self._ip_sums[source] + ident
        total = (total & 0xFFFF) + (total >> 16)
        ip_check = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
        return _IPV4_SYN.pack(0x45, 0, IPV4_LEN + TCP_LEN, ident, DONT_FRAGMENT, TTL, IPPROTO_TCP,
                              ip_check, self.sources[source], self.dst, *tcp)  # fmt: skip


def attempt(index: int, sources: int) -> tuple[int, int]:
    """(source index, source port) of the `index`-th attempt: sources rotate, then ports."""
    return index % sources, FIRST_PORT + (index // sources) % PORT_COUNT


def batch_size(elapsed: float, rate: float, attempted: int, total: int) -> int:
    """How many SYNs to send now: those due by `elapsed`, at most CATCH_UP ticks' worth."""
    due = min(total, int(elapsed * rate))
    return max(0, min(due - attempted, batch_cap(rate)))


def batch_cap(rate: float) -> int:
    return max(1, math.ceil(rate * TICK * CATCH_UP))


@dataclass(frozen=True, slots=True)
class FloodResult:
    sent: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def json(self) -> str:
        return json.dumps({"sent": self.sent, "seconds": round(self.seconds, 3),
                           "rate": round(self.rate, 1), "errors": self.errors})  # fmt: skip


Clock = Callable[[], float]


def flood(
    send: Callable[[bytes], object],
    template: SynTemplate,
    rate: float,
    seconds: float,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FloodResult:
    """Send round(rate * seconds) SYNs, the ones due every millisecond; a failed send (OSError)
    counts as an error, not as sent."""
    total, cap, sources = round(rate * seconds), batch_cap(rate), len(template.sources)
    packet, isn = template.packet, random.getrandbits
    attempted = errors = 0
    start = clock()
    while attempted < total:
        elapsed = clock() - start
        count = batch_size(elapsed, rate, attempted, total)
        for index in range(attempted, attempted + count):
            source, sport = attempt(index, sources)
            try:
                send(packet(source, sport, isn(32), index & 0xFFFF))
            except OSError:
                errors += 1
        attempted += count
        if count < cap:  # not behind: wait for the next tick
            sleep(max(0.0, TICK - (clock() - start - elapsed)))
    return FloodResult(attempted - errors, errors, clock() - start)


def source_addresses(first: str, count: int) -> tuple[int, list[int]]:
    """(IP version, `count` consecutive addresses from `first`)."""
    address = ipaddress.ip_address(first)
    last = address + (count - 1)  # raises ValueError past the end of the address space
    return address.version, list(range(int(address), int(last) + 1))


def raw_socket(version: int) -> socket.socket:
    """A raw socket that sends whole IP packets (IP_HDRINCL; implied by IPPROTO_RAW)."""
    if version == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        return sock
    return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--src", required=True, help="first source address")
    parser.add_argument("--dst", required=True, help="destination address (same family)")
    parser.add_argument("--dport", type=int, default=25)
    parser.add_argument("--rate", type=float, required=True, help="SYNs per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--sources", type=int, default=1, help="consecutive source addresses")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.sources < 1 or not 0 < args.dport < 65536:
        parser.error("--rate and --seconds must be positive, --sources >= 1, --dport 1-65535")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    version, sources = source_addresses(args.src, args.sources)
    dst = ipaddress.ip_address(args.dst)
    if dst.version != version:
        print("synflood: --src and --dst must be of the same IP version", file=sys.stderr)
        return 2
    template = SynTemplate(version, sources, int(dst), args.dport)
    target = (str(dst), 0)
    with raw_socket(version) as sock:
        result = flood(lambda data: sock.sendto(data, target), template, args.rate, args.seconds)
    print(result.json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
