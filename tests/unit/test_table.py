"""Flow table: the TCP state machine, retransmits, port reuse, bounds and expiry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.flow.table import FlowTable, TcpState, Timeouts, next_state
from portguard.packet.model import ACK, FIN, RST, SYN, Packet

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


def test_handshake_data_and_close() -> None:
    table = FlowTable()
    first = table.observe(tcp(SYN), now=0.0)
    assert first.new and first.flow.state is TcpState.SYN_SENT
    assert table.observe(reply(SYN | ACK), 0.1).flow.state is TcpState.SYN_RECEIVED
    assert table.observe(tcp(ACK), 0.2).flow.state is TcpState.ESTABLISHED
    assert table.observe(tcp(FIN | ACK), 5.0).flow.state is TcpState.CLOSING
    last = table.observe(reply(FIN | ACK), 5.1)
    assert last.flow.state is TcpState.CLOSED and not last.from_initiator
    assert last.flow is first.flow and last.flow.packets == 5
    assert len(table) == 1


def test_reset_from_either_side() -> None:
    table = FlowTable()
    table.observe(tcp(SYN), 0.0)
    assert table.observe(reply(RST | ACK), 0.01).flow.state is TcpState.RESET


def test_retransmitted_syn_is_the_same_flow() -> None:
    table = FlowTable()
    first = table.observe(tcp(SYN), 0.0)
    again = table.observe(tcp(SYN), 1.0)
    assert not again.new and again.retransmit and again.flow is first.flow
    assert again.flow.syn_retransmits == 1


def test_a_new_syn_on_the_same_ports_is_a_new_connection() -> None:
    table = FlowTable(id_prefix="w0-")
    old = table.observe(tcp(SYN, seq=1000), 0.0).flow
    resent = table.observe(tcp(SYN, seq=1000), 1.0)
    assert resent.retransmit and resent.flow is old
    fresh = table.observe(tcp(SYN, seq=999_999), 2.0)  # the client reused its port at once
    assert fresh.new and not fresh.retransmit and fresh.flow is not old
    assert (old.flow_id, fresh.flow.flow_id) == ("w0-1", "w0-2")


def test_syn_after_close_opens_a_new_flow() -> None:
    table = FlowTable()
    old = table.observe(tcp(SYN), 0.0).flow
    table.observe(reply(RST), 0.1)
    new = table.observe(tcp(SYN), 0.2)
    assert new.new and new.flow is not old and new.flow.flow_id != old.flow_id


def test_midstream_packet_opens_an_established_flow() -> None:
    table = FlowTable()
    seen = table.observe(tcp(ACK), 0.0)
    assert seen.new and seen.flow.midstream and seen.flow.state is TcpState.ESTABLISHED


def test_capacity_evicts_least_recently_seen() -> None:
    table = FlowTable(capacity=3)
    for port in (1001, 1002, 1003):
        table.observe(tcp(SYN, sport=port), 0.0)
    table.observe(tcp(SYN, sport=1001), 0.5)  # touch the oldest
    table.observe(tcp(SYN, sport=1004), 1.0)
    assert len(table) == 3 and table.evicted == 1
    assert table.get((4, CLIENT, SERVER, 1002, 25)) is None
    assert table.get((4, CLIENT, SERVER, 1001, 25)) is not None


def test_expiry_uses_the_state_timeout() -> None:
    table = FlowTable(timeouts=Timeouts(syn_sent=30.0, established=3600.0))
    table.observe(tcp(SYN, sport=1), 0.0)
    table.observe(tcp(ACK, sport=2), 0.0)  # midstream: established
    assert table.expire(29.0) == []
    gone = table.expire(31.0)
    assert [flow.key[3] for flow in gone] == [1]
    assert len(table) == 1 and table.expired == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FlowTable(capacity=0)


def test_next_state_ignores_unexpected_packets() -> None:
    table = FlowTable()
    flow = table.observe(tcp(SYN), 0.0).flow
    assert next_state(flow, ACK, from_initiator=True) is TcpState.SYN_SENT
    assert next_state(flow, SYN | ACK, from_initiator=True) is TcpState.SYN_SENT


@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([SYN, ACK, FIN, RST, SYN | ACK]),
                          st.floats(0, 200)), max_size=60))  # fmt: skip
def test_expiry_finds_exactly_what_a_full_scan_finds(steps: list[tuple[int, int, float]]) -> None:
    table, now = FlowTable(capacity=1000), 1000.0
    for port, flags, later in steps:
        now += later
        table.observe(tcp(flags, sport=40000 + port), now)
        flows = [table.get(key) for key in list(table._flows)]
        due = {f.key for f in flows if f and now - f.last_seen > table.timeouts.for_state(f.state)}
        assert {flow.key for flow in table.expire(now)} == due
