"""Decode the bytes the kernel queue hands over into a Packet (IPv4/IPv6 + TCP header).

Pure and hot-path: precompiled `struct` objects, no scapy. Every malformed or truncated input
raises DecodeError and nothing else.

Decoding never decides the policy: what the Linux TCP and IPv6 stacks accept, the decoder
accepts. TCP option parsing stops silently where Linux's `tcp_parse_options` stops (end of
list, a lone kind byte at the end, a length below 2 or running past the header), keeping the
options parsed so far; any number of IPv6 extension headers is walked (each is at least 8
bytes, so the walk is bounded by the packet), and unknown options inside them are just bytes.
Only what Linux rejects too, or what cannot be read at all (a TCP header beyond the copied
bytes, ESP, not TCP), raises. `endpoints` then reads what it can for the event.

Truncation: the kernel may copy only the first bytes of a packet (copy range). A buffer shorter
than the length the IP header states is accepted as long as the whole IP header chain and the
whole TCP header (options included) are present. A buffer longer than the stated length is cut
to the stated length (trailing bytes are not part of the packet). `Packet.length` and
`Packet.payload_len` always follow the stated length, so a truncated copy reports the TCP
payload the packet carries, not just the bytes that were copied.
"""

from __future__ import annotations

import struct

from portguard.core.packet.model import IPPROTO_TCP, DecodeError, Endpoints, Packet

# version/IHL, TOS, total length, id, flags/fragment offset, TTL, protocol, checksum, src, dst
_IPV4 = struct.Struct("!BBHHHBBHII")
# version/class/label, payload length, next header, hop limit, src hi/lo, dst hi/lo
_IPV6 = struct.Struct("!IHBBQQQQ")
# sport, dport, seq, ack, data offset (high nibble), flags, window
_TCP = struct.Struct("!HHIIBBH")
_EXT_HEADER = struct.Struct("!BB")  # next header, length field
_FRAGMENT = struct.Struct("!BxH")  # next header, reserved, offset (13 bits) | flags
_PORTS = struct.Struct("!HH")
# an IPv4 header without options and the TCP header's fields the gate needs, in one unpack:
# version/IHL, total length, flags/fragment offset, protocol, src, dst, sport, dport, seq,
# data offset, flags
_V4_SYN = struct.Struct("!BxHxxHxBxxIIHHIxxxxBB")
_V4_TCP_FIXED = 40  # an IPv4 header without options and a TCP header without options

# (version, src, dst, sport, dport, TCP flags, sequence number): what the gate decides on
SynFields = tuple[int, int, int, int, int, int, int]

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
TCP_HEADER_LEN = 20

_V4_FRAGMENT_OFFSET = 0x1FFF

EXT_HOP_BY_HOP = 0
EXT_ROUTING = 43
EXT_FRAGMENT = 44
EXT_ESP = 50
EXT_AH = 51
EXT_NO_NEXT = 59
EXT_DEST_OPTIONS = 60
_EXT_IN_8_BYTE_UNITS = frozenset({EXT_HOP_BY_HOP, EXT_ROUTING, EXT_DEST_OPTIONS})

OPT_EOL = 0
OPT_NOP = 1
_NOP: tuple[int, bytes] = (OPT_NOP, b"")

_Options = tuple[tuple[int, bytes], ...]


def decode(data: bytes) -> Packet:
    """Decode one IP packet carrying a TCP header; raise DecodeError when it is not one."""
    version, src, dst, ttl, offset, end, total = _ip_header(data)
    return _decode_tcp(data, offset, end, total, version, src, dst, ttl)


def decode_syn(data: bytes) -> SynFields:
    """What the gate needs of a queued packet, at the cost of the fixed headers only: the
    same packets are refused, with the same errors, as by `decode` (the TCP options, which
    never make a packet undecodable, are not parsed)."""
    if data and data[0] >> 4 == 4 and len(data) >= _V4_TCP_FIXED:  # the common case, inline
        vihl, total, frag, proto, src, dst, sport, dport, seq, data_offset, flags = (
            _V4_SYN.unpack_from(data)
        )
        tcp_len = (data_offset >> 4) * 4
        if (
            vihl == 0x45  # no IP options: the TCP header at 20
            and total >= _V4_TCP_FIXED
            and not frag & _V4_FRAGMENT_OFFSET
            and proto == IPPROTO_TCP
            and TCP_HEADER_LEN <= tcp_len <= min(total, len(data)) - IPV4_HEADER_LEN
        ):
            return (4, src, dst, sport, dport, flags, seq)
    version, src, dst, _ttl, offset, end, _total = _ip_header(data)
    sport, dport, seq, _ack, data_offset, flags, _window = _tcp_header(data, offset, end)
    return (version, src, dst, sport, dport, flags, seq)


def _ip_header(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    """(version, src, dst, ttl, TCP header offset, end of the packet's bytes, stated length)."""
    if not data:
        raise DecodeError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _ipv4_header(data)
    if version == 6:
        return _ipv6_header(data)
    raise DecodeError(f"IP version {version} is neither 4 nor 6")


def _ipv4_header(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    if len(data) < IPV4_HEADER_LEN:
        raise DecodeError(f"IPv4 header truncated: {len(data)} bytes")
    vihl, _tos, total, _id, frag, ttl, proto, _sum, src, dst = _IPV4.unpack_from(data)
    ihl = (vihl & 0x0F) * 4
    if ihl < IPV4_HEADER_LEN:
        raise DecodeError(f"IPv4 header length {ihl} below 20")
    if total < ihl:
        raise DecodeError(f"IPv4 total length {total} below header length {ihl}")
    if frag & _V4_FRAGMENT_OFFSET:
        raise DecodeError("IPv4 non-first fragment carries no TCP header")
    if proto != IPPROTO_TCP:
        raise DecodeError(f"IPv4 protocol {proto} is not TCP")
    return 4, src, dst, ttl, ihl, min(total, len(data)), total


def _ipv6_header(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    if len(data) < IPV6_HEADER_LEN:
        raise DecodeError(f"IPv6 header truncated: {len(data)} bytes")
    _vcl, plen, next_header, hops, src_hi, src_lo, dst_hi, dst_lo = _IPV6.unpack_from(data)
    if plen == 0:
        raise DecodeError("IPv6 payload length 0 (jumbogram or empty) carries no TCP header")
    total = IPV6_HEADER_LEN + plen
    end = min(total, len(data))
    offset = IPV6_HEADER_LEN
    if next_header != IPPROTO_TCP:
        offset = _skip_ipv6_extensions(data, next_header, end)
    return 6, (src_hi << 64) | src_lo, (dst_hi << 64) | dst_lo, hops, offset, end, total


def _skip_ipv6_extensions(data: bytes, next_header: int, end: int) -> int:
    """Walk the extension header chain, however long; return the offset of the TCP header.

    Every header takes at least 8 bytes, so the walk ends within `end` / 8 steps. Hop-by-hop
    options anywhere but first are refused, as Linux refuses them (ip6_input)."""
    offset = IPV6_HEADER_LEN
    while next_header != IPPROTO_TCP:
        if next_header == EXT_HOP_BY_HOP and offset > IPV6_HEADER_LEN:
            raise DecodeError("IPv6 hop-by-hop options not directly after the IPv6 header")
        next_header, offset = _skip_ipv6_extension(data, next_header, offset, end)
    return offset


def _skip_ipv6_extension(data: bytes, kind: int, offset: int, end: int) -> tuple[int, int]:
    """Return (next header, offset after) for the extension header `kind` at `offset`."""
    if offset + 8 > end:
        raise DecodeError(f"IPv6 extension header {kind} truncated at offset {offset}")
    if kind == EXT_FRAGMENT:
        next_header, frag = _FRAGMENT.unpack_from(data, offset)
        if frag >> 3:
            raise DecodeError("IPv6 non-first fragment carries no TCP header")
        return next_header, offset + 8
    next_header, length = _EXT_HEADER.unpack_from(data, offset)
    if kind in _EXT_IN_8_BYTE_UNITS:
        size = (length + 1) * 8
    elif kind == EXT_AH:
        size = (length + 2) * 4
    elif kind == EXT_ESP:
        raise DecodeError("IPv6 ESP: the TCP header is encrypted")
    elif kind == EXT_NO_NEXT:
        raise DecodeError("IPv6 no next header")
    else:
        raise DecodeError(f"IPv6 next header {kind} is neither TCP nor a known extension")
    if offset + size > end:
        raise DecodeError(f"IPv6 extension header {kind} truncated at offset {offset}")
    return next_header, offset + size


def _decode_tcp(
    data: bytes, offset: int, end: int, total: int, version: int, src: int, dst: int, ttl: int
) -> Packet:
    """Decode the TCP header at `offset`; `end` is where the packet's bytes in `data` stop."""
    sport, dport, seq, ack, data_offset, flags, window = _tcp_header(data, offset, end)
    options_end = offset + (data_offset >> 4) * 4
    options = _parse_options(data, offset + TCP_HEADER_LEN, options_end)
    return Packet(
        version,
        src,
        dst,
        sport,
        dport,
        flags,
        seq,
        ack,
        window,
        ttl,
        total,
        options,
        total - options_end,
    )


def _tcp_header(data: bytes, offset: int, end: int) -> tuple[int, int, int, int, int, int, int]:
    """The fixed TCP header's fields, once the whole header (options included) is known to
    lie within the packet's bytes."""
    if offset + TCP_HEADER_LEN > end:
        raise DecodeError(f"TCP header at offset {offset} truncated: packet ends at {end}")
    fields: tuple[int, int, int, int, int, int, int] = _TCP.unpack_from(data, offset)
    header_len = (fields[4] >> 4) * 4
    if header_len < TCP_HEADER_LEN:
        raise DecodeError(f"TCP data offset {header_len} below 20")
    if offset + header_len > end:
        raise DecodeError(f"TCP header with options truncated: needs {header_len} bytes")
    return fields


def _parse_options(data: bytes, offset: int, end: int) -> _Options:
    """TCP options as (kind, data); NOP is kept as (1, b"") to preserve the layout.

    The parse stops where Linux's tcp_parse_options stops, without an error, keeping what it
    parsed: at end-of-option-list (not listed: what follows is padding), at a kind byte with no
    length byte after it, at a length below 2, and at an option running past the header.
    """
    options: list[tuple[int, bytes]] = []
    append = options.append
    while offset < end:
        kind = data[offset]
        if kind > OPT_NOP:
            size = data[offset + 1] if offset + 1 < end else 0
            after = offset + size
            if size < 2 or after > end:
                break  # Linux stops parsing here and accepts the segment
            append((kind, data[offset + 2 : after]))
            offset = after
        elif kind == OPT_NOP:
            append(_NOP)
            offset += 1
        else:
            break
    return tuple(options)


def endpoints(data: bytes) -> Endpoints | None:
    """The addresses and ports of a packet `decode` refused, as far as they can be read.

    None when not even the IP addresses are there; the ports when the first 4 bytes of a TCP
    header can be found (IPv4 not a later fragment; IPv6 through its extension headers)."""
    if len(data) >= IPV4_HEADER_LEN and data[0] >> 4 == 4:
        vihl, _tos, _total, _id, frag, _ttl, proto, _sum, src, dst = _IPV4.unpack_from(data)
        ihl = (vihl & 0x0F) * 4
        tcp = ihl >= IPV4_HEADER_LEN and proto == IPPROTO_TCP and not frag & _V4_FRAGMENT_OFFSET
        return _with_ports(data, Endpoints(4, src, dst), ihl if tcp else None)
    if len(data) >= IPV6_HEADER_LEN and data[0] >> 4 == 6:
        _vcl, _plen, next_header, _hops, src_hi, src_lo, dst_hi, dst_lo = _IPV6.unpack_from(data)
        found = Endpoints(6, (src_hi << 64) | src_lo, (dst_hi << 64) | dst_lo)
        return _with_ports(data, found, _tcp_offset_v6(data, next_header))
    return None


def _tcp_offset_v6(data: bytes, next_header: int) -> int | None:
    """Where the TCP header starts, when the extension chain can be walked that far."""
    try:
        return _skip_ipv6_extensions(data, next_header, len(data))
    except DecodeError:
        return None


def _with_ports(data: bytes, found: Endpoints, tcp_offset: int | None) -> Endpoints:
    if tcp_offset is None or tcp_offset + 4 > len(data):
        return found
    sport, dport = _PORTS.unpack_from(data, tcp_offset)
    return found._replace(sport=sport, dport=dport)
