"""The floor: the least a Python NFQUEUE program can do per new connection, for comparison.

    python -m bench.floor [--queue 0] [--max-len 4096]   # in the gateway namespace, as root

Binds the queue as the daemon does (python-netfilterqueue, copy mode and range, queue length),
parses the header fields a decision needs with `struct` (IP version, addresses, protocol,
ports, TCP flags, sequence number; IPv4 and IPv6 without extension headers), marks the packet
with portguard's allow mark (verdict and direction "outbound") and answers NF_REPEAT, so the
hook's chain saves the mark to the connmark and lets the packet go, as for an allowed
connection. It keeps no state, applies no policy and logs nothing. Prints READY once bound,
and one JSON line {"packets": n, "unparsed": m} when SIGTERM or SIGINT ends it.

bench_decisions.py installs the same chain rules in front of it as portguard's iptables hook
(`decisions_lab.floor_hook`), so the kernel's work per packet is the daemon's.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, NamedTuple

from portguard.core.marks import MARK_ALLOW, mark_bits, with_mark_bits
from portguard.core.policy.model import Direction
from portguard.io.nfqueue import COPY_RANGE

IPPROTO_TCP = 6
ALLOW_BITS = mark_bits(MARK_ALLOW, Direction.OUTBOUND)
_IPV4 = struct.Struct("!B8xB2xII")  # version/IHL, protocol, src, dst
_IPV6 = struct.Struct("!I2xBx16s16s")  # version/class/label, next header, src, dst
_TCP = struct.Struct("!HHI5xB")  # sport, dport, seq, flags


class Syn(NamedTuple):
    """What a decision reads from a SYN (addresses as integers, as the daemon keeps them)."""

    version: int
    src: int
    dst: int
    sport: int
    dport: int
    flags: int
    seq: int


def parse(data: bytes) -> Syn | None:
    """The fields of an IPv4/IPv6 TCP packet; None when it is anything else or too short."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        vihl, proto, src, dst = _IPV4.unpack_from(data)
        offset = (vihl & 0x0F) * 4
    elif version == 6 and len(data) >= 40:
        _first, proto, src6, dst6 = _IPV6.unpack_from(data)
        src, dst, offset = int.from_bytes(src6, "big"), int.from_bytes(dst6, "big"), 40
    else:
        return None
    if proto != IPPROTO_TCP or len(data) < offset + 20:
        return None
    sport, dport, seq, flags = _TCP.unpack_from(data, offset)
    return Syn(version, src, dst, sport, dport, flags, seq)


class Floor:
    """The queue callback: parse, mark allow, repeat. Every packet gets its verdict."""

    def __init__(self) -> None:
        self.packets = 0
        self.unparsed = 0

    def __call__(self, packet: Any) -> None:
        try:
            if parse(packet.get_payload()) is None:
                self.unparsed += 1
            packet.set_mark(with_mark_bits(packet.get_mark(), ALLOW_BITS))
        finally:
            packet.repeat()
            self.packets += 1


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=4096, help="the daemon's [queue] max_len")
    args = parser.parse_args(argv)
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    floor, queue = Floor(), NetfilterQueue()
    queue.bind(args.queue, floor, max_len=args.max_len, mode=COPY_PACKET, range=COPY_RANGE)
    signal.signal(signal.SIGTERM, _stop)
    print("READY", flush=True)
    try:
        queue.run()
    except KeyboardInterrupt:
        pass
    finally:
        queue.unbind()
    print(json.dumps({"packets": floor.packets, "unparsed": floor.unparsed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
