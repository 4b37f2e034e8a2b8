"""A seeded packet fuzzer for the decoder and gate, and a reference of what Linux accepts.

`packets(seed, count)` yields `count` packets: valid TCP/IP SYNs (IPv4 with options, IPv6
behind up to a dozen extension headers, a 1 KiB destination-options header of skippable
unknown options, TCP option lists that end the way Linux tolerates) and mutants of them (bit
flips, interesting bytes, truncations, insertions, deletions, random bytes). Plain `random`,
not hypothesis: a million packets in seconds.

`linux_syn(data)` is an independent reference, written from the Linux sources rather than from
portguard's decoder: the 5-tuple of a packet that Linux would forward and accept as an initial
SYN (ip_rcv / ipv6_rcv lengths, conntrack's defragmentation and TCP flag checks, tcp_v4_rcv's
data offset), or None. It is a superset of what Linux accepts where that is the safe side
(checksums and option contents are not checked): everything it names must be decided by the
policy.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

from tests.strategies import PacketSpec

TCP, HOP_BY_HOP, ROUTING, FRAGMENT, ESP, AH, DEST_OPTIONS = 6, 0, 43, 44, 50, 51, 60
SYN, ACK, RST, FIN, PSH, URG = 0x02, 0x10, 0x04, 0x01, 0x08, 0x20
HOOKED_PORTS = frozenset({25, 465, 587})
COPY_RANGE = 4016  # what the kernel queue copies (portguard.io.nfqueue.COPY_RANGE)

ADDRESSES = {
    4: [0x64400A0A, 0x6440FFFE, 0xCB00710A, 0xC633641A, 0xC6336419, 0xC0000202],
    6: [0x20010DB8_00640010 << 64 | 0x10, 0x20010DB8_0B120000 << 64 | 0x10,
        0x20010DB8_00250000 << 64 | 0x26, 0x20010DB8_00250000 << 64 | 0x25,
        0x20010DB8_FFFF0000 << 64 | 2],
}  # fmt: skip
OPTION_LISTS = [
    b"\x02\x04\x05\xb4\x04\x02\x08\x0a\xaa\xbb\xcc\xdd\x00\x00\x00\x00\x01\x03\x03\x07",  # Linux
    b"\x02\x04\x05\xb4\x01\x01\x01\x08",  # a lone kind byte at the end
    b"\x02\x04\x05\xb4\x02\x00\x00\x00",  # a length of 0
    b"\x02\x04\x05\xb4\x08\x0b\x00\x00",  # runs past the header
    b"\x02\x04\x05\xb4\x00\x00\x00\x00",  # end of list, padding
    b"",
]
FLAGS = [SYN] * 8 + [SYN | PSH, SYN | URG, SYN | 0xC0, SYN | ACK, SYN | FIN, SYN | RST, ACK, 0]
DPORTS = [25, 25, 465, 587, 2525, 80]
INTERESTING = [0x00, 0x01, 0x02, 0x05, 0x06, 0x0F, 0x11, 0x2C, 0x32, 0x3B, 0x3C, 0x45, 0x60, 0xFF]


def options_header(kind: int, units: int, unknown: bool) -> tuple[int, bytes]:
    """Hop-by-hop or destination options of (units + 1) * 8 bytes: PadN, or unknown options
    of type 0x1E (action 00: skip) filling it."""
    space, body = (units + 1) * 8 - 2, b""
    while unknown and space - len(body) >= 2:
        data = min(254, space - len(body) - 2)
        body += bytes([0x1E, data]) + b"\xa5" * data
    fill = space - len(body)
    if fill == 1:
        body += b"\x00"  # Pad1
    elif fill:
        body += bytes([1, fill - 2]) + bytes(fill - 2)  # PadN
    return kind, bytes([TCP, units]) + body


def extension(rng: random.Random) -> tuple[int, bytes]:
    kind = rng.choice([DEST_OPTIONS, DEST_OPTIONS, ROUTING, FRAGMENT, AH])
    if kind == DEST_OPTIONS:
        return options_header(DEST_OPTIONS, rng.randrange(3), rng.random() < 0.3)
    if kind == ROUTING:
        return ROUTING, bytes([TCP, 2, 4, 0]) + bytes(4) + bytes(16)  # type 4, segments left 0
    if kind == FRAGMENT:
        return FRAGMENT, struct.pack("!BxHI", TCP, rng.choice([0, 0, 1, 8]), 7)
    return AH, struct.pack("!BBHII", TCP, 4, 0, 256, 1) + bytes(12)


def chain(rng: random.Random) -> tuple[tuple[int, bytes], ...]:
    shape = rng.random()
    if shape < 0.35:
        return ()
    if shape < 0.45:
        return (options_header(DEST_OPTIONS, 127, True),)  # ~1 KiB of skippable options
    links = [extension(rng) for _ in range(rng.randrange(1, 13))]
    if rng.random() < 0.2:
        links.insert(0 if rng.random() < 0.8 else 1, options_header(HOP_BY_HOP, 0, False))
    return tuple(links)


def base_packet(rng: random.Random) -> bytes:
    version = rng.choice((4, 6))
    src, dst = rng.choice(ADDRESSES[version]), rng.choice(ADDRESSES[version])
    wire = rng.choice(OPTION_LISTS)
    spec = PacketSpec(
        version, src, dst, rng.randrange(1024, 65536), rng.choice(DPORTS), rng.choice(FLAGS),
        rng.getrandbits(32), 0, 64240, 64, (), wire, rng.randbytes(rng.choice((0, 0, 20))),
        b"\x01" * 4 * rng.randrange(3) if version == 4 else b"",
        chain(rng) if version == 6 else (),
    )  # fmt: skip
    return spec.to_bytes()


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 3)):
        how, where = rng.randrange(6), rng.randrange(len(data) + 1)
        if how == 0 and where < len(data):
            data[where] ^= 1 << rng.randrange(8)
        elif how == 1 and where < len(data):
            data[where] = rng.choice(INTERESTING)
        elif how == 2:
            del data[where:]
        elif how == 3:
            data[where:where] = rng.randbytes(rng.randint(1, 8))
        elif how == 4:
            del data[where : where + rng.randint(1, 8)]
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 80)))
    return bytes(data)


def packets(seed: int, count: int, pool_size: int = 3000) -> Iterator[bytes]:
    """`count` packets: a third valid, the rest mutants of valid ones."""
    rng = random.Random(seed)
    pool = [base_packet(rng) for _ in range(pool_size)]
    for _ in range(count):
        base = rng.choice(pool)
        yield base if rng.random() < 0.35 else mutate(rng, base)


# --- the reference: what Linux accepts as a SYN to a hooked port ------------------------------

FiveTuple = tuple[int, int, int, int, int]  # version, src, dst, sport, dport


def linux_syn(data: bytes) -> FiveTuple | None:
    """The packet's 5-tuple if Linux would pass it through conntrack to the hook as an initial
    SYN to a hooked port with its TCP header within the queue's copy, else None."""
    if len(data) >= 20 and data[0] >> 4 == 4:
        return _v4(data)
    if len(data) >= 40 and data[0] >> 4 == 6:
        return _v6(data)
    return None


def _v4(data: bytes) -> FiveTuple | None:
    ihl, total = (data[0] & 0x0F) * 4, int.from_bytes(data[2:4], "big")
    if ihl < 20 or total < ihl or total > len(data):  # ip_rcv_core
        return None
    if int.from_bytes(data[6:8], "big") & 0x3FFF or data[9] != TCP:  # fragments: reassembled
        return None
    src, dst = int.from_bytes(data[12:16], "big"), int.from_bytes(data[16:20], "big")
    return _tcp(data, ihl, total, 4, src, dst)


def _v6(data: bytes) -> FiveTuple | None:
    end = 40 + int.from_bytes(data[4:6], "big")
    if end == 40 or end > len(data):  # ipv6_rcv: a jumbogram needs hop-by-hop, not here
        return None
    kind, offset = data[6], 40
    while kind != TCP:
        if offset + 8 > end or (kind == HOP_BY_HOP and offset != 40):
            return None
        if kind in (HOP_BY_HOP, ROUTING, DEST_OPTIONS):
            size = (data[offset + 1] + 1) * 8
        elif kind == AH:
            size = (data[offset + 1] + 2) * 4
        elif kind == FRAGMENT and not int.from_bytes(data[offset + 2 : offset + 4], "big"):
            size = 8  # an atomic fragment; any other is reassembled before the hook
        else:
            return None  # ESP, no next header, not TCP
        kind, offset = data[offset], offset + size
    src, dst = int.from_bytes(data[8:24], "big"), int.from_bytes(data[24:40], "big")
    return _tcp(data, offset, end, 6, src, dst)


def _tcp(data: bytes, offset: int, end: int, version: int, src: int, dst: int) -> FiveTuple | None:
    if offset + 20 > end:
        return None
    header = (data[offset + 12] >> 4) * 4
    flags = data[offset + 13]
    if header < 20 or offset + header > min(end, COPY_RANGE):  # tcp_v4_rcv / the copy
        return None
    if flags & (SYN | ACK | RST | FIN) != SYN:  # conntrack: SYN without ACK, RST or FIN
        return None
    sport, dport = struct.unpack_from("!HH", data, offset)
    return (version, src, dst, sport, dport) if dport in HOOKED_PORTS else None
