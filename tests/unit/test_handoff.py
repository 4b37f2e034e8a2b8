"""The packet loop's frames to its log process: records and events survive the trip exactly."""

from __future__ import annotations

import marshal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from portguard.core.denycache import KernelHits
from portguard.core.events.record import DecisionRecord
from portguard.log import handoff

V6 = (6, 0x20010DB8006400100000000000000010, 0x20010DB8002500000000000000000025, 40312, 25)
LIMIT = {"rate": "30/minute", "burst": 10, "per": "src", "key": "100.64.10.10",
         "tokens": 0.0, "exceeded": True, "table_full": False}  # fmt: skip


def record(limit: dict[str, object] | None = LIMIT) -> DecisionRecord:
    return DecisionRecord(1795798800.123456, *V6, "outbound", "reject", "block-25",
                          "10-isp.toml", "no direct mail", "matched rule 'block-25'", "v1",
                          "0-6747a1f0-2a", limit)  # fmt: skip


def test_a_decision_record_crosses_as_it_was_with_its_ipv6_addresses() -> None:
    for sent in (record(), record(None)):
        [message], rest = handoff.split_frames(handoff.loggable_frame(sent))
        assert rest == b"" and message[:1] == handoff.DECISION
        received = handoff.decision_of(message[1:])
        assert received == sent and type(received) is DecisionRecord


def test_an_event_crosses_as_json() -> None:
    event = {"@timestamp": "t", "message": "line\nbreak"}
    [message], _ = handoff.split_frames(handoff.loggable_frame(event))
    assert message[:1] == handoff.EVENT and orjson.loads(message[1:]) == event


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=0, max_value=4000))
def test_frames_split_anywhere_come_out_whole_and_in_order(payloads: list[bytes], cut: int) -> None:
    data = b"".join(handoff.frame(handoff.EVENT, payload) for payload in payloads)
    cut = min(cut, len(data))
    first, rest = handoff.split_frames(data[:cut])
    second, tail = handoff.split_frames(rest + data[cut:])
    assert tail == b""
    assert [m[1:] for m in first + second] == payloads


def test_control_frames_carry_their_kind() -> None:
    messages, _ = handoff.split_frames(handoff.frame(handoff.DROPS, b"12") +
                                       handoff.frame(handoff.REOPEN))  # fmt: skip
    assert messages == [b"D12", b"R"]


def test_a_batch_carries_runs_of_records_and_events_in_order() -> None:
    batch = handoff.Batch()
    sent: list[object] = [record(), record(None), {"message": "malformed"}, record(), record()]
    for logged in sent:
        batch.add(logged)  # type: ignore[arg-type]
    data, count = batch.take()
    assert count == 5 and batch.take() == (b"", 0)
    frames, rest = handoff.split_frames(data)
    kinds = [f[:1] for f in frames]
    assert rest == b"" and kinds == [handoff.RECORDS, handoff.EVENT, handoff.RECORDS]
    received: list[object] = []
    for message in frames:
        if message[:1] == handoff.RECORDS:
            received.extend(handoff.records_of(message[1:]))
        else:
            received.append(orjson.loads(message[1:]))
    assert received == sent
    assert all(type(r) is DecisionRecord for r in received if not isinstance(r, dict))


def test_kernel_hits_cross_with_their_record() -> None:
    sent = KernelHits(record(), 17998, 1795798800.5, 1795798810.25)
    [message], rest = handoff.split_frames(handoff.kernel_hits_frame(sent))
    assert rest == b"" and message[:1] == handoff.KERNEL_HITS
    received = handoff.kernel_hits_of(message[1:])
    assert received == sent and type(received.record) is DecisionRecord


def test_consecutive_runs_of_the_fast_path_s_records_cross_as_one_frame() -> None:
    """The fast path's lists (no references to earlier values: marshal's version 2 writes
    none either) are joined; a record of the gate's in between ends the run."""
    fast = [record(None)._replace(sport=port) for port in range(1000, 1005)]
    gate = record(None)._replace(sport=2000)
    batch = handoff.Batch()
    batch.add_records(marshal.dumps([tuple(r) for r in fast[:2]], 2), 2)
    batch.add_records(marshal.dumps([tuple(r) for r in fast[2:4]], 2), 2)
    batch.add(gate)
    batch.add_records(marshal.dumps([tuple(fast[4])], 2), 1)
    data, count = batch.take()
    frames, rest = handoff.split_frames(data)
    assert count == 6 and rest == b"" and [f[:1] for f in frames] == [handoff.RECORDS] * 3
    received = [r for f in frames for r in handoff.records_of(f[1:])]
    assert received == [*fast[:4], gate, fast[4]]
