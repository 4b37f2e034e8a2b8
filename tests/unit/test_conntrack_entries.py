"""The conntrack edge without a kernel: entries parsed from recorded netlink messages, and the
requests made to end a connection (pyroute2's Conntrack replaced by a recording stand-in).

The messages were recorded from a real kernel (6.18): ``pyroute2.Conntrack(AF_UNSPEC).dump()``
in a namespace holding TCP and UDP entries with the marks their names give.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from portguard.core.marks import MARK_ALLOW, MARK_DROP, MARK_REJECT, VERDICT_MASK
from portguard.core.policy.model import Connection, Direction
from portguard.io import conntrack
from portguard.io.conntrack import (
    ConntrackError,
    TrackedConnection,
    describe,
    end_connection,
    ending_bits,
    original_tuple,
    parse_entry,
)

V6_ALLOW_INBOUND_ZONE7 = bytes.fromhex(
    "2801000000010200ff000000550c00000a0000004c0001802c0001801400030020010db80000000000000000"
    "000000011400040020010db80001000000000000000000021c0002800500010006000000060002009c420000"
    "06000300024b00004c0002802c0001801400030020010db80001000000000000000000021400040020010db8"
    "0000000000000000000000011c000280050001000600000006000200024b0000060003009c42000006001200"
    "00070000080003000000000a080008000900000008000c00ae64190e08000b000000000108000700000001f4"
    "300004802c000180050001000300000005000200000000000500030000000000060004000a00000006000500"
    "0a0000001c001880080001000000000008000200000000000800030000000000"
)
V4_ALLOW_OUTBOUND = bytes.fromhex(
    "f000000000010200ff000000550c000002000000340001801400018008000100c000020108000200c6336402"
    "1c0002800500010006000000060002009c4000000600030000190000340002801400018008000100c6336402"
    "08000200c00002011c00028005000100060000000600020000190000060003009c400000080003000000000e"
    "080008000500004208000c00b01aea0108000b000000000108000700000001f4300004802c00018005000100"
    "0300000005000200000000000500030000000000060004000a000000060005000a0000001c00188008000100"
    "0000000008000200000000000800030000000000"
)
V4_UDP_ALLOW = bytes.fromhex(
    "c000000000010200ff000000550c000002000000340001801400018008000100c000020108000200c6336402"
    "1c0002800500010011000000060002000fa000000600030000350000340002801400018008000100c6336402"
    "08000200c00002011c00028005000100110000000600020000350000060003000fa000000800030000000008"
    "080008000100000008000c00f96f98d908000b000000000108000700000001f41c0018800800010000000000"
    "08000200000000000800030000000000"
)
V4_REJECT_OUTBOUND = bytes.fromhex(
    "f000000000010200ff000000550c000002000000340001801400018008000100c000020108000200c6336402"
    "1c0002800500010006000000060002009c4100000600030001d10000340002801400018008000100c6336402"
    "08000200c00002011c00028005000100060000000600020001d10000060003009c410000080003000000000a"
    "080008000600000008000c00bb3ce95308000b000000000108000700000001f4300004802c00018005000100"
    "0300000005000200000000000500030000000000060004000a000000060005000a0000001c00188008000100"
    "0000000008000200000000000800030000000000"
)
V4_UNMARKED = bytes.fromhex(
    "f000000000010200ff000000550c000002000000340001801400018008000100c000020108000200c6336402"
    "1c0002800500010006000000060002009c4300000600030000190000340002801400018008000100c6336402"
    "08000200c00002011c00028005000100060000000600020000190000060003009c430000080003000000000a"
    "080008000000000008000c002f2b19d908000b000000000108000700000001f4300004802c00018005000100"
    "0300000005000200000000000500030000000000060004000a000000060005000a0000001c00188008000100"
    "0000000008000200000000000800030000000000"
)

V4_CLIENT, V4_SERVER = 0xC0000201, 0xC6336402  # 192.0.2.1, 198.51.100.2
V6_CLIENT, V6_SERVER = 0x20010DB8 << 96 | 1, 0x20010DB8_0001 << 80 | 2  # 2001:db8::1, 2001:db8:1::2


def decoded(raw: bytes) -> Any:
    message = nfct_msg(raw)
    message.decode()
    return message


def test_parse_an_allowed_ipv4_connection() -> None:
    conn = parse_entry(decoded(V4_ALLOW_OUTBOUND))
    assert conn == TrackedConnection(
        version=4,
        src=V4_CLIENT,
        dst=V4_SERVER,
        sport=40000,
        dport=25,
        direction=Direction.OUTBOUND,
        mark=0x05000042,  # the operator's bits come along
        entry_id=0xB01AEA01,
        zone=0,
    )
    assert conn.connection == Connection(4, V4_CLIENT, V4_SERVER, 25, Direction.OUTBOUND)


def test_parse_an_allowed_ipv6_connection_in_a_zone() -> None:
    conn = parse_entry(decoded(V6_ALLOW_INBOUND_ZONE7))
    assert conn is not None
    assert (conn.version, conn.src, conn.dst) == (6, V6_CLIENT, V6_SERVER)
    assert (conn.sport, conn.dport, conn.direction) == (40002, 587, Direction.INBOUND)
    assert (conn.mark, conn.entry_id, conn.zone) == (0x09000000, 0xAE64190E, 7)


@pytest.mark.parametrize("raw", [V4_UDP_ALLOW, V4_REJECT_OUTBOUND, V4_UNMARKED])
def test_parse_skips_what_portguard_did_not_allow_or_is_not_tcp(raw: bytes) -> None:
    assert parse_entry(decoded(raw)) is None


def test_ending_bits() -> None:
    assert (ending_bits("reject"), ending_bits("drop")) == (MARK_REJECT, MARK_DROP)
    with pytest.raises(ValueError, match="reject"):
        ending_bits("accept")  # type: ignore[arg-type]


def test_original_tuple_finds_the_entry_again() -> None:
    for raw, family in (
        (V4_ALLOW_OUTBOUND, socket.AF_INET),
        (V6_ALLOW_INBOUND_ZONE7, socket.AF_INET6),
    ):
        message = decoded(raw)
        conn = parse_entry(message)
        assert conn is not None
        found = original_tuple(conn)
        assert found.family == family and found.proto == socket.IPPROTO_TCP
        assert found.nla_eq(message["nfgen_family"], message.get_attr("CTA_TUPLE_ORIG"))


def test_describe() -> None:
    v4, v6 = parse_entry(decoded(V4_ALLOW_OUTBOUND)), parse_entry(decoded(V6_ALLOW_INBOUND_ZONE7))
    assert v4 is not None and v6 is not None
    assert describe(v4) == "192.0.2.1:40000 -> 198.51.100.2:25"
    assert describe(v6) == "[2001:db8::1]:40002 -> [2001:db8:1::2]:587"


class FakeConntrack:
    """Stands in for pyroute2.Conntrack: records requests; raises ``failure`` when it is set."""

    requests: list[tuple[int, str, dict[str, Any]]]
    failure: Exception | None = None

    def __init__(self, nfgen_family: int) -> None:
        self.family = nfgen_family

    def __enter__(self) -> FakeConntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def entry(self, cmd: str, **kwargs: Any) -> None:
        FakeConntrack.requests.append((self.family, cmd, kwargs))
        if FakeConntrack.failure is not None:
            raise FakeConntrack.failure

    def dump(self, mark: int, mark_mask: int) -> list[Any]:
        FakeConntrack.requests.append((self.family, "dump", {"mark": mark, "mark_mask": mark_mask}))
        if FakeConntrack.failure is not None:
            raise FakeConntrack.failure
        raws = (V6_ALLOW_INBOUND_ZONE7, V4_ALLOW_OUTBOUND, V4_UDP_ALLOW, V4_REJECT_OUTBOUND)
        return [decoded(raw) for raw in raws]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeConntrack]:
    FakeConntrack.requests, FakeConntrack.failure = [], None
    monkeypatch.setattr(conntrack, "Conntrack", FakeConntrack)
    return FakeConntrack


def test_allowed_connections_asks_the_kernel_for_allow_marks(fake: type[FakeConntrack]) -> None:
    found = conntrack.allowed_connections()
    assert [(c.version, c.dport, c.direction) for c in found] == [
        (6, 587, Direction.INBOUND),
        (4, 25, Direction.OUTBOUND),
    ]
    assert fake.requests == [(0, "dump", {"mark": MARK_ALLOW, "mark_mask": VERDICT_MASK})]


def test_allowed_connections_reports_failures(fake: type[FakeConntrack]) -> None:
    fake.failure = NetlinkError(errno.EPERM, "Operation not permitted")
    with pytest.raises(ConntrackError, match="listing conntrack entries failed"):
        conntrack.allowed_connections()


@pytest.mark.parametrize(
    ("raw", "how", "family", "zone"),
    [
        (V6_ALLOW_INBOUND_ZONE7, "reject", socket.AF_INET6, 7),
        (V4_ALLOW_OUTBOUND, "drop", socket.AF_INET, None),  # zone 0: not sent
    ],
)
def test_end_connection_rewrites_only_the_verdict_bits(
    fake: type[FakeConntrack], raw: bytes, how: conntrack.Ending, family: int, zone: int | None
) -> None:
    conn = parse_entry(decoded(raw))
    assert conn is not None
    assert end_connection(conn, how)
    [(sent_family, command, request)] = fake.requests
    assert (sent_family, command) == (family, "set")
    assert request == {
        "tuple_orig": original_tuple(conn),
        "zone": zone,
        "mark": ending_bits(how),
        "mark_mask": VERDICT_MASK,
    }


def test_end_connection_false_when_the_entry_is_gone(fake: type[FakeConntrack]) -> None:
    conn = parse_entry(decoded(V4_ALLOW_OUTBOUND))
    assert conn is not None
    fake.failure = NetlinkError(errno.ENOENT, "No such file or directory")
    assert not end_connection(conn, "drop")


def test_end_connection_reports_other_failures(fake: type[FakeConntrack]) -> None:
    conn = parse_entry(decoded(V4_ALLOW_OUTBOUND))
    assert conn is not None
    fake.failure = NetlinkError(errno.EPERM, "Operation not permitted")
    with pytest.raises(ConntrackError, match=r"ending 192.0.2.1:40000 -> 198.51.100.2:25 failed"):
        end_connection(conn, "reject")
    fake.failure = PermissionError(errno.EPERM, "Operation not permitted")
    with pytest.raises(ConntrackError, match="Operation not permitted"):
        end_connection(conn, "reject")


def built_entry(orig: tuple[str, int, str, int], reply: tuple[str, int, str, int]) -> Any:
    """A conntrack entry as pyroute2 decodes it (IPv4 TCP, allowed outbound), built by hand."""

    def tuple_node(src: str, sport: int, dst: int | str, dport: int) -> dict[str, Any]:
        ip = {"attrs": [("CTA_IP_V4_SRC", src), ("CTA_IP_V4_DST", dst)]}
        ports = [("CTA_PROTO_SRC_PORT", sport), ("CTA_PROTO_DST_PORT", dport)]
        proto = {"attrs": [("CTA_PROTO_NUM", socket.IPPROTO_TCP), *ports]}
        return {"attrs": [("CTA_TUPLE_IP", ip), ("CTA_TUPLE_PROTO", proto)]}

    mark = MARK_ALLOW | 0x04000000  # allow, outbound
    return {"nfgen_family": socket.AF_INET, "attrs": [
        ("CTA_TUPLE_ORIG", tuple_node(*orig)), ("CTA_TUPLE_REPLY", tuple_node(*reply)),
        ("CTA_MARK", mark), ("CTA_ID", 9)]}  # fmt: skip


def test_a_dnat_connection_is_judged_by_the_address_the_gate_saw() -> None:
    """A port forward: the client dialled 203.0.113.80:2525, PREROUTING's DNAT sent it to
    192.0.2.25:25, and the hook in FORWARD decided on 192.0.2.25:25 (the reply's source)."""
    entry = built_entry(("100.64.10.10", 40000, "203.0.113.80", 2525),
                        ("192.0.2.25", 25, "100.64.10.10", 40000))  # fmt: skip
    conn = parse_entry(entry)
    assert conn is not None
    assert (conn.src, conn.sport) == (0x64400A0A, 40000)
    assert (conn.dst, conn.dport) == (0xC0000219, 25)
    assert conn.connection == Connection(4, 0x64400A0A, 0xC0000219, 25, Direction.OUTBOUND)
    found = original_tuple(conn)  # the kernel still finds the entry by its original tuple
    assert (found.daddr, found.dport, found.saddr, found.sport) == (
        "203.0.113.80", 2525, "100.64.10.10", 40000)  # fmt: skip


def test_a_snat_connection_is_judged_by_the_source_before_translation() -> None:
    """Masquerading in POSTROUTING happens after the hook: the gate saw the subscriber."""
    entry = built_entry(("100.64.10.10", 40000, "198.51.100.25", 25),
                        ("198.51.100.25", 25, "203.0.113.1", 61000))  # fmt: skip
    conn = parse_entry(entry)
    assert conn is not None
    assert conn.connection == Connection(4, 0x64400A0A, 0xC6336419, 25, Direction.OUTBOUND)
    assert conn.orig_dst is None and original_tuple(conn).daddr == "198.51.100.25"
