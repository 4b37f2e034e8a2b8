"""The deny cache's pure parts: what may be cached, and the worker's book of marked keys."""

from __future__ import annotations

import pytest

from portguard.core.denycache import CacheBook, cache_key, cacheable
from portguard.core.events.record import DecisionRecord
from portguard.core.policy.model import Action, Decision, Limit, LimitResult

SUBSCRIBER, MX = 0x64400A0A, 0xC6336419


def decision(action: Action, per_second: float | None = None, allowed: bool = False) -> Decision:
    limit = None
    if per_second is not None:
        rule_limit = Limit("n/s", per_second, 1, "src", 32, 64, Action.REJECT)
        limit = LimitResult(allowed, "100.64.10.10", 0.0, rule_limit)
    return Decision(action, "r", "10.toml", "", "why", limit=limit)


@pytest.mark.parametrize(
    ("made", "period", "expected"),
    [
        (decision(Action.REJECT), 10.0, True),
        (decision(Action.DROP), 10.0, True),
        (decision(Action.REJECT), 0.0, False),  # the cache is off
        (decision(Action.ALLOW), 10.0, False),
        (decision(Action.LOG), 10.0, False),
        (decision(Action.REJECT, per_second=0.1), 10.0, True),  # a token: 10 s
        (decision(Action.REJECT, per_second=0.1), 10.5, False),
        (decision(Action.REJECT, per_second=20.0), 10.0, False),
        (decision(Action.ALLOW, per_second=0.01, allowed=True), 10.0, False),
    ],
)
def test_cacheable(made: Decision, period: float, expected: bool) -> None:
    assert cacheable(made, period) is expected


def record(dst: int = MX, now: float = 100.0, rule: str = "block-25") -> DecisionRecord:
    return DecisionRecord(now, 4, SUBSCRIBER, dst, 40000, 25, "outbound", "reject", rule,
                          "10.toml", "", "why", "v1", "f1", None)  # fmt: skip


def test_the_book_reports_the_hits_of_its_keys_with_their_decisions() -> None:
    book = CacheBook()
    mine, late = record(MX, 100.0), record(MX + 1, 109.5)
    book.mark(mine, 100.0)
    book.mark(late, 109.5)  # within MARGIN of the rotation: it may be in either generation
    hits = {cache_key(mine): 40, cache_key(late): 0, (4, SUBSCRIBER, MX + 2, 25): 7}
    [found] = book.report(hits, 90.0, 110.0)  # a key with no hits, or not ours: skipped
    assert (found.record, found.hits, found.start, found.end) == (mine, 40, 90.0, 110.0)
    assert len(book) == 1  # `mine` is forgotten, `late` kept for the next generation
    [again] = book.report({cache_key(late): 3}, 110.0, 120.0)
    assert again.record == late and len(book) == 0


def test_the_book_keeps_the_newest_decision_of_a_key_and_is_bounded() -> None:
    book = CacheBook(capacity=2)
    book.mark(record(MX, 1.0, "old"), 1.0)
    book.mark(record(MX, 2.0, "new"), 2.0)
    assert [f.record.rule_id for f in book.report({cache_key(record()): 1}, 0, 2.5)] == ["new"]
    for dst in range(3):
        book.mark(record(dst), 5.0)
    assert len(book) == 2  # the oldest went
    assert book.report({cache_key(record(0)): 1}, 0, 1.0) == []
