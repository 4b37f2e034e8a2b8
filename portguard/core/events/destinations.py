"""The distinct destinations of a source's denies, in bounded memory (flood summaries, reports).

`DistinctAddresses` keeps the addresses themselves, exactly, up to `KEEP` (100); the count is
then exact. Past `KEEP` it turns into a HyperLogLog sketch of every address it was given (the
kept ones included) and forgets the addresses: 1,024 one-byte registers, so the count becomes
an estimate (`exact` False) with a standard error of about 3 % (1.04 / sqrt(1024)), and much
less below a few thousand addresses, where the sketch counts its empty registers (linear
counting). Two sketches merge exactly (register by register), and an address hashes to the
same register everywhere, so a report that unions summaries' addresses and sketches gets the
same number as one that saw every deny on its own.

`WindowDestinations` is what a flood-control window keeps besides: the attempts per port (up to
`MAX_PORTS` ports) and the first `SAMPLES` distinct destinations as ``ip:port``, in the order
first tried (so ``sample[0]`` is the window's first deny). Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import math
from hashlib import blake2b
from typing import Any

KEEP = 100  # addresses kept exactly
SAMPLES = 10  # sample destinations ("ip:port")
MAX_PORTS = 32  # ports a window counts attempts for
SKETCH_BITS = 10
REGISTERS = 1 << SKETCH_BITS
_REST_BITS = 64 - SKETCH_BITS
_REST_MASK = (1 << _REST_BITS) - 1
_ALPHA = 0.7213 / (1 + 1.079 / REGISTERS)


def sketch_add(sketch: bytearray, address: str) -> None:
    """Count `address` in a HyperLogLog sketch (64-bit BLAKE2b of its text)."""
    hashed = int.from_bytes(blake2b(address.encode(), digest_size=8).digest(), "big")
    rank = _REST_BITS - (hashed & _REST_MASK).bit_length() + 1
    index = hashed >> _REST_BITS
    if rank > sketch[index]:
        sketch[index] = rank


def sketch_estimate(sketch: bytes | bytearray) -> int:
    """The number of distinct addresses a sketch has seen (linear counting while it can)."""
    zeros = sketch.count(0)
    raw = _ALPHA * REGISTERS * REGISTERS / math.fsum(2.0**-rank for rank in sketch)
    if raw <= 2.5 * REGISTERS and zeros:
        return round(REGISTERS * math.log(REGISTERS / zeros))
    return round(raw)


def sketch_text(sketch: bytearray) -> str:
    return base64.b64encode(bytes(sketch)).decode()


def sketch_of(text: str) -> bytearray:
    """A sketch from its text; ValueError when it is not one."""
    registers = bytearray(base64.b64decode(text.encode(), validate=True))
    if len(registers) != REGISTERS or max(registers) > _REST_BITS + 1:
        raise ValueError("not a destination sketch")
    return registers


class DistinctAddresses:
    """Distinct addresses: exact up to `KEEP`, a sketch past it (see the module docstring)."""

    __slots__ = ("kept", "sketch")

    def __init__(self) -> None:
        self.kept: dict[str, None] | None = {}  # None once past KEEP: the sketch counts
        self.sketch: bytearray | None = None

    def add(self, address: str) -> bool:
        """Count `address`; True when it was new to the kept addresses (past KEEP: False)."""
        kept = self.kept
        if kept is not None:
            if address in kept:
                return False
            if len(kept) < KEEP:
                kept[address] = None
                return True
            self._to_sketch()
        assert self.sketch is not None
        sketch_add(self.sketch, address)
        return False

    def merge(self, addresses: list[str], sketch: bytearray | None) -> None:
        """Another set's addresses, or its sketch (which makes this one a sketch too)."""
        for address in addresses:
            self.add(address)
        if sketch is not None:
            if self.sketch is None:
                self._to_sketch()
            assert self.sketch is not None
            self.sketch[:] = bytes(map(max, self.sketch, sketch))

    @property
    def exact(self) -> bool:
        return self.kept is not None

    @property
    def count(self) -> int:
        return len(self.kept) if self.kept is not None else sketch_estimate(self.sketch or b"")

    def fields(self) -> dict[str, Any]:
        """``count``, ``exact`` and the ``addresses`` (while exact) or the ``sketch``."""
        if self.kept is not None:
            return {"count": len(self.kept), "exact": True, "addresses": list(self.kept)}
        assert self.sketch is not None
        return {"count": self.count, "exact": False, "sketch": sketch_text(self.sketch)}

    def _to_sketch(self) -> None:
        self.sketch = bytearray(REGISTERS)
        for address in self.kept or ():
            sketch_add(self.sketch, address)
        self.kept = None


class WindowDestinations:
    """A flood-control window's destinations: distinct addresses, attempts per port, samples."""

    __slots__ = ("addresses", "ports", "sample")

    def __init__(self) -> None:
        self.addresses = DistinctAddresses()
        self.ports: dict[int, int] = {}  # port -> attempts
        self.sample: list[str] = []

    def add(self, address: str, port: int, attempts: int = 1) -> None:
        if self.addresses.add(address) and len(self.sample) < SAMPLES:
            self.sample.append(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
        if port in self.ports:
            self.ports[port] += attempts
        elif len(self.ports) < MAX_PORTS:
            self.ports[port] = attempts

    def fields(self) -> dict[str, Any]:
        """``portguard.aggregate.destinations`` (docs/logging.md, "Flood control")."""
        ports = sorted(self.ports)
        return {
            **self.addresses.fields(),
            "ports": ports,
            "port_attempts": [self.ports[port] for port in ports],
            "sample": list(self.sample),
        }
