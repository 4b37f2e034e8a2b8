"""Flow table: a new flow per decided SYN, bounds and expiry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.core.flow.table import FlowTable, TcpState, Timeouts
from portguard.core.packet.model import ACK, FIN, RST, SYN, Packet

CLIENT, SERVER = 0x64400A0A, 0xC6336419  # 100.64.10.10, 198.51.100.25


def tcp(
    flags: int,
    src: int = CLIENT,
    dst: int = SERVER,
    sport: int = 40312,
    dport: int = 25,
    seq: int = 1,
) -> Packet:
    return Packet(4, src, dst, sport, dport, flags, seq, 0, 64240, 64, 60)


def reply(flags: int, sport: int = 40312) -> Packet:
    return tcp(flags, src=SERVER, dst=CLIENT, sport=25, dport=sport)


def test_start_always_opens_a_new_flow_for_the_packets_own_tuple() -> None:
    table = FlowTable(capacity=2, id_prefix="q-")
    first = table.start(tcp(SYN, seq=7), 0.0)
    replay = table.start(tcp(SYN, seq=7), 1.0)  # the same tuple and ISN: still a new flow
    assert replay is not first and (first.flow_id, replay.flow_id) == ("q-1", "q-2")
    assert table.get(first.key) is replay and len(table) == 1
    back = table.start(reply(SYN), 2.0)  # the other way: its own flow, its sender initiates
    assert back.key == (4, SERVER, CLIENT, 25, 40312) and len(table) == 2
    table.start(tcp(SYN, sport=1), 3.0)  # full: the least recently seen goes
    assert table.get(first.key) is None and table.evicted == 1


def test_a_packet_without_syn_opens_an_established_flow() -> None:
    table = FlowTable()
    flow = table.start(tcp(ACK), 0.0)
    assert flow.midstream and flow.state is TcpState.ESTABLISHED
    assert table.start(tcp(RST), 0.1).state is TcpState.RESET


def test_capacity_evicts_least_recently_opened() -> None:
    table = FlowTable(capacity=3)
    for port in (1001, 1002, 1003):
        table.start(tcp(SYN, sport=port), 0.0)
    table.start(tcp(SYN, sport=1001), 0.5)  # opened again: now the newest
    table.start(tcp(SYN, sport=1004), 1.0)
    assert len(table) == 3 and table.evicted == 1
    assert table.get((4, CLIENT, SERVER, 1002, 25)) is None
    assert table.get((4, CLIENT, SERVER, 1001, 25)) is not None


def test_expiry_uses_the_state_timeout() -> None:
    table = FlowTable(timeouts=Timeouts(syn_sent=30.0, established=3600.0))
    table.start(tcp(SYN, sport=1), 0.0)
    table.start(tcp(ACK, sport=2), 0.0)  # midstream: established
    assert table.expire(29.0) == []
    gone = table.expire(31.0)
    assert [flow.key[3] for flow in gone] == [1]
    assert len(table) == 1 and table.expired == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FlowTable(capacity=0)


@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([SYN, ACK, FIN, RST, SYN | ACK]),
                          st.floats(0, 200)), max_size=60))  # fmt: skip
def test_expiry_finds_exactly_what_a_full_scan_finds(steps: list[tuple[int, int, float]]) -> None:
    table, now = FlowTable(capacity=1000), 1000.0
    for port, flags, later in steps:
        now += later
        table.start(tcp(flags, sport=40000 + port), now)
        flows = [table.get(key) for key in list(table._flows)]
        due = {f.key for f in flows if f and now - f.last_seen > table.timeouts.for_state(f.state)}
        assert {flow.key for flow in table.expire(now)} == due
