"""The quarantine table: refusal by source key and port, expiry by time, capacity, and the
plain-dict state it is kept in (merged at start and from other workers)."""

from __future__ import annotations

from portguard.core.detect.quarantine import Quarantine, entries_of, entry
from portguard.core.policy.model import Action

BOT = 0x64400A0A  # 100.64.10.10
V6_BOT = 0x20010DB8006400100000000000000010


def test_an_empty_table_is_false_and_refuses_nothing() -> None:
    table = Quarantine()
    assert not table and table.refusal(4, BOT, 25, 0.0) is None


def test_a_quarantined_source_is_refused_on_its_ports_until_its_expiry() -> None:
    table = Quarantine()
    assert table.add(entry((4, BOT), "fanout", 0.0, 60.0, [25, 587]))
    refused = table.refusal(4, BOT, 25, 10.0)
    assert refused is not None and refused.action is Action.REJECT
    assert refused.rule_id == "quarantine:fanout" and refused.ruleset == "quarantine"
    assert refused.reason == (
        "100.64.10.10 quarantined by fanout until 1970-01-01T00:01:00.000000Z"
    )
    assert table.refusal(4, BOT, 465, 10.0) is None
    assert table.refusal(4, BOT + 1, 25, 10.0) is None
    assert table.refusal(4, BOT, 25, 60.0) is None
    assert table.refused == 1


def test_an_ipv6_source_is_quarantined_by_its_64() -> None:
    table = Quarantine()
    table.add(entry((6, V6_BOT >> 64), "fanout", 0.0, 60.0, [25]))
    assert table.refusal(6, V6_BOT + 0xFFFF, 25, 1.0) is not None
    assert table.refusal(6, V6_BOT + (1 << 64), 25, 1.0) is None
    assert table.get((6, V6_BOT >> 64)) is not None
    assert table.entries[(6, V6_BOT >> 64)].source == "2001:db8:64:10::/64"


def test_expiry_and_release() -> None:
    table = Quarantine()
    table.add(entry((4, BOT), "fanout", 0.0, 60.0, [25]))
    table.add(entry((4, BOT + 1), "manual", 0.0, 30.0, [25]))
    assert [e.key for e in table.expire(30.0)] == [(4, BOT + 1)]
    assert table.release((4, BOT)) is not None and table.release((4, BOT)) is None
    assert not table


def test_a_full_table_refuses_new_sources_and_counts_them() -> None:
    table = Quarantine(capacity=1)
    assert table.add(entry((4, BOT), "fanout", 0.0, 60.0, [25]))
    assert not table.add(entry((4, BOT + 1), "fanout", 0.0, 60.0, [25]))
    assert table.add(entry((4, BOT), "fanout", 1.0, 90.0, [25])), "extending is no new source"
    assert table.full == 1


def test_the_state_round_trips_and_merging_keeps_the_newest_live_entry() -> None:
    table = Quarantine()
    table.add(entry((4, BOT), "fanout", 0.0, 60.0, [25, 465]))
    table.add(entry((6, V6_BOT >> 64), "manual", 0.0, 600.0, [25]))
    document = table.to_dict()
    copy = Quarantine()
    assert len(copy.merge(document, 1.0)) == 2
    assert copy.entries == table.entries
    assert copy.merge(document, 1.0) == [], "nothing newer"
    newer = Quarantine()
    newer.add(entry((4, BOT), "fanout", 5.0, 65.0, [25]))
    assert [e.since for e in copy.merge(newer.to_dict(), 6.0)] == [5.0]
    assert Quarantine().merge(document, 100.0) == [e for e in entries_of(document)][1:]


def test_malformed_state_is_skipped() -> None:
    good = entry((4, BOT), "fanout", 0.0, 60.0, [25]).fields()
    document = {"sources": [good, {"source": "not an address"}, 7, {**good, "ports": "x"}]}
    assert [e.key for e in entries_of(document)] == [(4, BOT)]
    assert entries_of([]) == [] and entries_of({"sources": 3}) == []
