"""The conntrack edge: list the connections portguard allowed, and end one of them.

An allowed connection's conntrack entry carries portguard's mark (connmark): the verdict allow and
the connection's direction (see ``portguard.core.marks``). To end a connection, its verdict
bits are rewritten to reject or drop; the hook's chain then answers the next packet of the
connection, from either side, with a TCP reset (reject) or discards it (drop). The entry itself
stays: deleting it would let conntrack pick the connection up again from its next packet,
unmarked.

This module uses pyroute2's blocking ``Conntrack``, which runs an asyncio loop of its own for each
call: call it from plain code or a thread, never from inside a running asyncio loop. It acts in
the network namespace of the calling process.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Final, Literal

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from portguard.core.marks import MARK_ALLOW, MARK_DROP, MARK_REJECT, VERDICT_MASK, direction_of_mark
from portguard.core.policy.model import Connection, Direction

Ending = Literal["reject", "drop"]
ENDINGS: Final[dict[str, int]] = {"reject": MARK_REJECT, "drop": MARK_DROP}
VERSIONS: Final = {socket.AF_INET: 4, socket.AF_INET6: 6}
FAMILIES: Final = {version: family for family, version in VERSIONS.items()}
_IP_ATTRS: Final = {4: "CTA_IP_V4", 6: "CTA_IP_V6"}


class ConntrackError(Exception):
    """Talking to conntrack failed (no permission, no conntrack in the kernel, ...)."""


@dataclass(frozen=True, slots=True)
class TrackedConnection:
    """A TCP connection portguard allowed, as the gate saw it when it decided.

    The hook sits in FORWARD/OUTPUT: after a DNAT (PREROUTING, nat OUTPUT) and before a SNAT
    (POSTROUTING). So the gate saw the original source, and the destination the DNAT chose,
    which is the source of the entry's reply tuple. ``orig_dst``/``orig_dport`` keep the
    original tuple's destination: the kernel finds the entry by its original tuple."""

    version: int  # 4 or 6
    src: int  # the client's address as an integer (before any SNAT)
    dst: int  # the server's address the gate saw (after any DNAT)
    sport: int
    dport: int  # after any DNAT
    direction: Direction  # recorded in the connmark when the connection was allowed
    mark: int  # the entry's whole connmark when it was listed
    entry_id: int | None  # the kernel's id of the entry (for logs: a reused tuple gets a new one)
    zone: int = 0  # conntrack zone (0 unless the operator uses zones)
    orig_dst: int | None = None  # the original tuple's destination, when a DNAT changed it
    orig_dport: int | None = None

    @property
    def connection(self) -> Connection:
        """What the policy decides on."""
        return Connection(self.version, self.src, self.dst, self.dport, self.direction)


def _attrs(node: Any) -> dict[str, Any]:
    """A decoded netlink message's attributes by name, in one pass over them."""
    return {item[0]: item[1] for item in node["attrs"]}


def parse_entry(message: Any) -> TrackedConnection | None:
    """A conntrack entry as pyroute2 decodes it; None unless TCP and allowed by portguard."""
    top = _attrs(message)
    mark, version = top.get("CTA_MARK") or 0, VERSIONS.get(message["nfgen_family"])
    direction = direction_of_mark(mark)
    if version is None or direction is None or mark & VERDICT_MASK != MARK_ALLOW:
        return None
    orig = _attrs(top["CTA_TUPLE_ORIG"])
    ip, proto = _attrs(orig["CTA_TUPLE_IP"]), _attrs(orig["CTA_TUPLE_PROTO"])
    if proto.get("CTA_PROTO_NUM") != socket.IPPROTO_TCP:
        return None
    prefix = _IP_ATTRS[version]
    dst, dport = int(ipaddress.ip_address(ip[f"{prefix}_DST"])), proto["CTA_PROTO_DST_PORT"]
    seen_dst, seen_dport = _reply_source(top, prefix) or (dst, dport)
    nat = (seen_dst, seen_dport) != (dst, dport)
    return TrackedConnection(
        version=version,
        src=int(ipaddress.ip_address(ip[f"{prefix}_SRC"])),
        dst=seen_dst,
        sport=proto["CTA_PROTO_SRC_PORT"],
        dport=seen_dport,
        direction=direction,
        mark=mark,
        entry_id=top.get("CTA_ID"),
        zone=top.get("CTA_ZONE") or 0,
        orig_dst=dst if nat else None,
        orig_dport=dport if nat else None,
    )


def _reply_source(top: dict[str, Any], prefix: str) -> tuple[int, int] | None:
    """The reply tuple's source (address, port): where the connection really goes, after any
    DNAT. None when the entry has no usable reply tuple."""
    reply = top.get("CTA_TUPLE_REPLY")
    if reply is None:
        return None
    tuple_attrs = _attrs(reply)
    ip, proto = _attrs(tuple_attrs["CTA_TUPLE_IP"]), _attrs(tuple_attrs["CTA_TUPLE_PROTO"])
    address, port = ip.get(f"{prefix}_SRC"), proto.get("CTA_PROTO_SRC_PORT")
    if address is None or port is None:
        return None
    return int(ipaddress.ip_address(address)), port


def ending_bits(how: Ending) -> int:
    """The verdict bits that end a connection: reject (TCP reset) or drop."""
    if how not in ENDINGS:
        raise ValueError(f"a connection ends by one of {tuple(ENDINGS)}, not {how!r}")
    return ENDINGS[how]


def original_tuple(conn: TrackedConnection) -> NFCTAttrTuple:
    family = FAMILIES[conn.version]
    return NFCTAttrTuple(
        family=family,
        saddr=str(ipaddress.ip_address(conn.src)),
        daddr=str(ipaddress.ip_address(conn.dst if conn.orig_dst is None else conn.orig_dst)),
        proto=socket.IPPROTO_TCP,
        sport=conn.sport,
        dport=conn.dport if conn.orig_dport is None else conn.orig_dport,
    )


def allowed_connections() -> list[TrackedConnection]:
    """Every TCP connection whose connmark reads allow, IPv4 and IPv6."""
    try:
        with Conntrack(nfgen_family=socket.AF_UNSPEC) as conntrack:
            messages = conntrack.dump(mark=MARK_ALLOW, mark_mask=VERDICT_MASK)
            return [conn for conn in map(parse_entry, messages) if conn is not None]
    except (NetlinkError, OSError) as error:
        raise ConntrackError(f"listing conntrack entries failed: {error}") from error


def end_connection(conn: TrackedConnection, how: Ending) -> bool:
    """Rewrite the entry's verdict bits to ``how``; False when the entry is gone.

    One request: the kernel changes only the verdict bits (CTA_MARK_MASK), so the direction and
    every bit that is not portguard's keep their values, whatever was written to them since the
    listing. The entry is found by its original tuple and zone (the kernel ignores CTA_ID here).
    """
    bits = ending_bits(how)
    where = {"tuple_orig": original_tuple(conn), "zone": conn.zone or None}
    try:
        with Conntrack(nfgen_family=FAMILIES[conn.version]) as conntrack:
            conntrack.entry("set", mark=bits, mark_mask=VERDICT_MASK, **where)
    except NetlinkError as error:
        if error.code == errno.ENOENT:
            return False
        raise ConntrackError(f"ending {describe(conn)} failed: {error}") from error
    except OSError as error:
        raise ConntrackError(f"ending {describe(conn)} failed: {error}") from error
    return True


def describe(conn: TrackedConnection) -> str:
    src, dst = ipaddress.ip_address(conn.src), ipaddress.ip_address(conn.dst)
    if conn.version == 6:
        return f"[{src}]:{conn.sport} -> [{dst}]:{conn.dport}"
    return f"{src}:{conn.sport} -> {dst}:{conn.dport}"
