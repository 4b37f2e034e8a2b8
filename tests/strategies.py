"""Reusable hypothesis strategies: valid TCP/IP packets (IPv4/IPv6) as bytes, and mutations.

The packets are built here with `struct`, independently of portguard.core.packet.decode, with
correct IPv4 header and TCP checksums, so that scapy and the kernel accept them too.

- `packet_specs()`: a PacketSpec (fields + `to_bytes()` + `expected()` decoded Packet).
- `tcp_packets()`: valid packets as bytes.
- `mutated_packets()`: valid packets with bit flips, truncations, insertions, deletions and
  overwrites (mostly invalid, some still valid).
- `random_packets()`: random bytes, half of them starting with an IPv4/IPv6 version nibble.
- `any_packets()`: all of the above mixed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from portguard.core.packet.model import Packet

TCP = 6
HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTIONS = 0, 43, 44, 51, 60

Options = tuple[tuple[int, bytes], ...]
Extension = tuple[int, bytes]  # (header kind, header bytes with a placeholder next-header byte)


@dataclass(frozen=True)
class PacketSpec:
    """A valid TCP/IP packet described field by field."""

    version: int
    src: int
    dst: int
    sport: int
    dport: int
    flags: int
    seq: int
    ack: int
    window: int
    ttl: int
    options: Options = ()  # TCP options as decode reports them (NOPs included, no EOL)
    options_wire: bytes = b""  # the same options as sent, padded to a multiple of 4
    payload: bytes = b""
    ip_options: bytes = b""  # IPv4 only, a multiple of 4 bytes
    extensions: tuple[Extension, ...] = ()  # IPv6 only, in order

    @property
    def tcp_header_len(self) -> int:
        return 20 + len(self.options_wire)

    @property
    def header_len(self) -> int:
        """Bytes from the start of the packet to the end of the TCP header."""
        if self.version == 4:
            return 20 + len(self.ip_options) + self.tcp_header_len
        return 40 + sum(len(body) for _, body in self.extensions) + self.tcp_header_len

    @property
    def length(self) -> int:
        return self.header_len + len(self.payload)

    def expected(self) -> Packet:
        return Packet(
            self.version, self.src, self.dst, self.sport, self.dport, self.flags, self.seq,
            self.ack, self.window, self.ttl, self.length, self.options, len(self.payload),
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        segment = self._tcp_segment()
        if self.version == 4:
            return self._ipv4_header() + segment
        return self._ipv6_header() + self._extension_chain() + segment

    def _tcp_segment(self) -> bytes:
        offset = (self.tcp_header_len // 4) << 4
        head = struct.pack(
            "!HHIIBBHHH", self.sport, self.dport, self.seq, self.ack, offset, self.flags,
            self.window, 0, 0,
        )  # fmt: skip
        segment = head + self.options_wire + self.payload
        checksum = internet_checksum(self._pseudo_header(len(segment)) + segment)
        return segment[:16] + struct.pack("!H", checksum) + segment[18:]

    def _pseudo_header(self, size: int) -> bytes:
        if self.version == 4:
            return struct.pack("!IIBBH", self.src, self.dst, 0, TCP, size)
        return _v6_address(self.src) + _v6_address(self.dst) + struct.pack("!IxxxB", size, TCP)

    def _ipv4_header(self) -> bytes:
        ihl = 5 + len(self.ip_options) // 4
        fields = (0x40 | ihl, 0, self.length, 0x1234, 0x4000, self.ttl, TCP, 0, self.src, self.dst)
        header = struct.pack("!BBHHHBBHII", *fields) + self.ip_options
        checksum = internet_checksum(header)
        return header[:10] + struct.pack("!H", checksum) + header[12:]

    def _ipv6_header(self) -> bytes:
        first = self.extensions[0][0] if self.extensions else TCP
        head = struct.pack("!IHBB", 0x6000_0000, self.length - 40, first, self.ttl)
        return head + _v6_address(self.src) + _v6_address(self.dst)

    def _extension_chain(self) -> bytes:
        if not self.extensions:
            return b""
        kinds = [kind for kind, _ in self.extensions[1:]] + [TCP]
        return b"".join(
            bytes([nxt]) + body[1:] for (_, body), nxt in zip(self.extensions, kinds, strict=True)
        )


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _v6_address(value: int) -> bytes:
    return value.to_bytes(16, "big")


# --- TCP options ---------------------------------------------------------------------------
# Few, coarse draws on purpose: hypothesis' cost grows with the number of draws per example,
# and the end-to-end property test runs these strategies many thousand times.

_OPTION_SIZES = {2: 2, 3: 1, 4: 0, 8: 8}  # MSS, window scale, SACK permitted, timestamps
_OPTION_KIND = st.sampled_from([1, 1, 2, 3, 4, 5, 8]) | st.integers(2, 255)


def _option(kind: int, data: bytes) -> tuple[int, bytes]:
    """A well-formed option of `kind`, its data cut or padded from `data`."""
    if kind == 1:
        return 1, b""
    if kind == 5:  # SACK: 1-3 blocks of 8 bytes
        return 5, data[:16].ljust(8 * max(1, len(data[:16]) // 8), b"\x00")
    if kind in _OPTION_SIZES:
        return kind, data[: _OPTION_SIZES[kind]].ljust(_OPTION_SIZES[kind], b"\x00")
    return kind, data[:8]


def _encode_option(kind: int, data: bytes) -> bytes:
    return b"\x01" if kind == 1 else bytes([kind, len(data) + 2]) + data


def _pack_options(drawn: list[tuple[int, bytes]]) -> tuple[Options, bytes]:
    chosen: list[tuple[int, bytes]] = []
    wire = b""
    for kind, data in (_option(*pair) for pair in drawn):
        encoded = _encode_option(kind, data)
        if len(wire) + len(encoded) <= 40:
            chosen.append((kind, data))
            wire += encoded
    return tuple(chosen), wire + bytes(-len(wire) % 4)  # EOL padding


def tcp_options() -> st.SearchStrategy[tuple[Options, bytes]]:
    """(options as decoded, wire bytes padded with EOL to a multiple of 4, at most 40)."""
    pairs = st.lists(st.tuples(_OPTION_KIND, st.binary(max_size=16)), max_size=7)
    return pairs.map(_pack_options)


# --- IPv6 extension headers ----------------------------------------------------------------


def _options_header(kind: int, units: int) -> Extension:
    size = (units + 1) * 8  # one PadN option fills the header
    return kind, bytes([TCP, units, 1, size - 4]) + bytes(size - 4)


def _routing_header(count: int) -> Extension:
    addresses = b"".join(_v6_address(0x2001_0DB8 << 96 | n) for n in range(count))
    return ROUTING, bytes([TCP, 2 * count, 0, 0]) + bytes(4) + addresses  # segments left 0


def _extension(kind: int, size: int, filler: bytes) -> Extension:
    """An extension header of `kind`; `size` (0-2) and `filler` (12 bytes) vary it."""
    if kind == DEST_OPTIONS:
        return _options_header(DEST_OPTIONS, size)
    if kind == ROUTING:
        return _routing_header(size)
    if kind == FRAGMENT:  # first fragment: offset 0, M flag set or an atomic fragment
        return FRAGMENT, struct.pack("!BxH", TCP, size & 1) + filler[:4]
    spi_seq = struct.pack("!II", 256 + size, 0)  # AH with a 12-byte ICV: 24 bytes, length 4
    return AH, struct.pack("!BBH", TCP, 4, 0) + spi_seq + filler


def _chain(hop_by_hop: int, drawn: list[tuple[int, int, bytes]]) -> tuple[Extension, ...]:
    chain = [_extension(*triple) for triple in drawn]
    if hop_by_hop:
        chain.insert(0, _options_header(HOP_BY_HOP, hop_by_hop - 1))
    return tuple(chain)


def ipv6_extensions() -> st.SearchStrategy[tuple[Extension, ...]]:
    """0-4 extension headers; hop-by-hop, when present, comes first."""
    kinds = st.sampled_from([DEST_OPTIONS, ROUTING, FRAGMENT, AH])
    middle = st.lists(
        st.tuples(kinds, st.integers(0, 2), st.binary(min_size=12, max_size=12)), max_size=3
    )
    return st.builds(_chain, st.integers(0, 3), middle)


# --- whole packets -------------------------------------------------------------------------

_PORT = st.integers(0, 65535)
_WORD = st.integers(0, 2**32 - 1)


def _address(version: int) -> st.SearchStrategy[int]:
    return _WORD if version == 4 else st.integers(0, 2**128 - 1)


@st.composite
def packet_specs(
    draw: st.DrawFn,
    versions: tuple[int, ...] = (4, 6),
    dports: st.SearchStrategy[int] | None = None,
    flags: st.SearchStrategy[int] | None = None,
    max_payload: int = 64,
) -> PacketSpec:
    """A valid TCP/IP packet; narrow ports or flags with strategies (e.g. st.just(SYN))."""
    version = draw(st.sampled_from(versions))
    options, options_wire = draw(tcp_options())
    ip_options = b""
    extensions: tuple[Extension, ...] = ()
    if version == 4:
        ip_options = b"\x01" * (4 * draw(st.integers(0, 10)))  # NOPs: valid, skipped
    else:
        extensions = draw(ipv6_extensions())
    address = _address(version)
    src, dst, sport, dport, flag_bits, seq, ack, window, ttl = draw(
        st.tuples(address, address, _PORT, dports if dports is not None else _PORT,
        flags if flags is not None else st.integers(0, 255),
                  _WORD, _WORD, _PORT, st.integers(1, 255))
    )  # fmt: skip
    payload = draw(st.binary(max_size=max_payload))
    return PacketSpec(
        version, src, dst, sport, dport, flag_bits, seq, ack, window, ttl, options,
        options_wire, payload, ip_options, extensions,
    )  # fmt: skip


def tcp_packets(versions: tuple[int, ...] = (4, 6)) -> st.SearchStrategy[bytes]:
    """Valid TCP/IP packets as bytes."""
    return packet_specs(versions).map(PacketSpec.to_bytes)


_INTERESTING = st.sampled_from([0x00, 0x01, 0x02, 0x05, 0x06, 0x0F, 0x2C, 0x3B, 0x45, 0x60, 0xFF])


@st.composite
def _mutate(draw: st.DrawFn, packet: bytes) -> bytes:
    data = bytearray(packet)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete"]))
        if how == "truncate":
            del data[where:]
        elif how == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif where < len(data) and how == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif where < len(data):
            data[where] = draw(_INTERESTING | st.integers(0, 255))
    return bytes(data)


def mutated_packets(base: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[bytes]:
    """Valid packets (from `base`, default tcp_packets()) after 1-4 random mutations."""
    return (base or tcp_packets()).flatmap(_mutate)


def random_packets() -> st.SearchStrategy[bytes]:
    """Random bytes; half start with a 4 or 6 version nibble to get past the first check."""
    versioned = st.tuples(st.sampled_from([0x45, 0x46, 0x4F, 0x60]), st.binary(max_size=120))
    return st.binary(max_size=120) | versioned.map(lambda pair: bytes([pair[0]]) + pair[1])


def any_packets() -> st.SearchStrategy[bytes]:
    """Valid, mutated and random packets mixed: what a hostile network could queue."""
    return st.one_of(tcp_packets(), mutated_packets(), random_packets())
