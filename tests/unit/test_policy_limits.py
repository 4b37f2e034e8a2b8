"""Token buckets: per source, per prefix, per rule; refill with `now`; reloads; bounded memory."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.limits import (
    TABLE_FULL_LOG_INTERVAL,
    BucketTable,
    Limiter,
    TableFullReport,
    bucket_name,
    bucket_of,
    limited_decision,
)
from portguard.core.policy.model import Action, Connection, Direction, Limit
from portguard.core.policy.ruleset import CompiledRule, RuleSet

BUSINESS = """
[sets.business]
cidrs = ["203.0.113.0/24", "2001:db8:b12::/48"]

[[rule]]
id = "business-25"
description = "business customers, 5 connections a minute"
src = "business"
dport = 25
direction = "outbound"
action = "allow"
log = false
limit = {{ rate = "5/minute", burst = 5, per = "{per}", exceed = "{exceed}" }}

[[rule]]
id = "block-25"
dport = 25
action = "reject"
"""


def policy(per: str = "src", exceed: str = "reject", extra: str = "") -> RuleSet:
    text = BUSINESS.format(per=per, exceed=exceed) + extra
    return compile_ruleset([(Path("/r/10-isp.toml"), text)], lambda path: "")


def conn(src: str, dport: int = 25, dst: str = "198.51.100.25") -> Connection:
    s, d = (
        ipaddress.ip_address(src),
        ipaddress.ip_address(dst if ":" not in src else "2001:db8::25"),
    )
    return Connection(s.version, int(s), int(d), dport, Direction.OUTBOUND)


def rule_of(ruleset: RuleSet) -> CompiledRule:
    return ruleset.rules[0]


def test_the_sixth_rapid_connection_is_rejected_and_another_customer_is_not() -> None:
    ruleset, limiter = policy(), Limiter()
    decisions = [limiter.decide(ruleset, conn("203.0.113.7"), 100.0 + i * 0.01) for i in range(6)]
    assert [d.action for d in decisions] == [Action.ALLOW] * 5 + [Action.REJECT]
    sixth = decisions[-1]
    assert sixth.rule_id == "business-25" and sixth.ruleset == "10-isp.toml"
    assert sixth.limit is not None and not sixth.limit.allowed
    assert sixth.limit.key == "203.0.113.7"
    assert "exceeded its limit 5/minute per src, burst 5" in sixth.reason
    assert sixth.log  # a limit hit is always logged, even with log = false
    assert sixth.limit.fields() == {
        "rate": "5/minute",
        "burst": 5,
        "per": "src",
        "key": "203.0.113.7",
        "tokens": pytest.approx(0.005, abs=0.001),
        "exceeded": True,
        "table_full": False,
    }
    other = limiter.decide(ruleset, conn("203.0.113.8"), 100.1)
    assert other.action is Action.ALLOW and other.limit is not None and other.limit.allowed
    assert not other.log  # within the limit, the rule's log = false holds
    assert "within limit 5/minute" in other.reason


def test_the_bucket_refills_at_the_rate() -> None:
    ruleset, limiter = policy(), Limiter()
    for i in range(5):
        assert limiter.decide(ruleset, conn("203.0.113.7"), float(i)).action is Action.ALLOW
    assert limiter.decide(ruleset, conn("203.0.113.7"), 5.0).action is Action.REJECT
    # 5/minute = one token every 12 s; the 4.x tokens used refill by ~t=12
    assert limiter.decide(ruleset, conn("203.0.113.7"), 11.0).action is Action.REJECT
    assert limiter.decide(ruleset, conn("203.0.113.7"), 16.0).action is Action.ALLOW
    assert limiter.decide(ruleset, conn("203.0.113.7"), 16.1).action is Action.REJECT
    assert limiter.decide(ruleset, conn("203.0.113.7"), 1000.0).limit.tokens == 4.0  # type: ignore[union-attr]


def test_a_clock_that_steps_back_does_not_mint_tokens() -> None:
    ruleset, limiter = policy(), Limiter()
    for _ in range(5):
        limiter.decide(ruleset, conn("203.0.113.7"), 100.0)
    assert limiter.decide(ruleset, conn("203.0.113.7"), 50.0).action is Action.REJECT
    assert limiter.decide(ruleset, conn("203.0.113.7"), 100.0).action is Action.REJECT


def test_per_prefix_shares_a_bucket_within_the_prefix() -> None:
    ruleset, limiter = policy("prefix"), Limiter()
    for last in range(1, 6):
        assert limiter.decide(ruleset, conn(f"203.0.113.{last}"), 1.0).action is Action.ALLOW
    sixth = limiter.decide(ruleset, conn("203.0.113.99"), 1.0)
    assert sixth.action is Action.REJECT and sixth.limit is not None
    assert sixth.limit.key == "203.0.113.0/24"
    v6 = [limiter.decide(ruleset, conn(f"2001:db8:b12:0:{i}::1"), 1.0) for i in range(6)]
    assert v6[-1].action is Action.REJECT
    assert v6[-1].limit is not None and v6[-1].limit.key == "2001:db8:b12::/64"
    assert limiter.decide(ruleset, conn("2001:db8:b12:1::1"), 1.0).action is Action.ALLOW


def test_per_rule_is_one_bucket_and_exceed_log_allows() -> None:
    ruleset, limiter = policy("rule", "log"), Limiter()
    results = [limiter.decide(ruleset, conn(f"203.0.113.{i}"), 1.0) for i in range(1, 7)]
    assert [d.action for d in results] == [Action.ALLOW] * 5 + [Action.LOG]
    assert results[-1].limit is not None and results[-1].limit.key == "rule"
    assert len(limiter) == 1


def test_rules_without_limit_and_the_default_take_no_token() -> None:
    ruleset, limiter = policy(), Limiter()
    assert limiter.decide(ruleset, conn("100.64.1.1"), 1.0) is ruleset.rules[1].decision
    assert limiter.decide(ruleset, conn("100.64.1.1", 587), 1.0) is ruleset.default
    assert len(limiter) == 0
    with pytest.raises(ValueError, match="has no limit"):
        limiter.take(ruleset.rules[1], conn("100.64.1.1"), 1.0)


def test_buckets_survive_a_reload_unless_the_limit_changed() -> None:
    limiter = Limiter()
    first = policy()
    for _ in range(5):
        limiter.decide(first, conn("203.0.113.7"), 1.0)
    same = policy(extra="\n# an edit elsewhere\n")
    assert same.version != first.version
    assert limiter.decide(same, conn("203.0.113.7"), 1.0).action is Action.REJECT
    changed = policy(exceed="drop")
    assert limiter.decide(changed, conn("203.0.113.7"), 1.0).action is Action.ALLOW


def limit(per: str = "src", prefix4: int = 32, prefix6: int = 64, max_buckets: int = 3) -> Limit:
    """1 token a second, burst 5: an empty bucket is full again 5 s after its last token."""
    return Limit("1/second", 1.0, 5, per, prefix4, prefix6, Action.REJECT, max_buckets)  # type: ignore[arg-type]


def drain(table: BucketTable, source: int, now: float, tokens: int = 5) -> None:
    for _ in range(tokens):
        assert table.take(source, now) is not None


def test_full_buckets_go_first_in_the_order_they_refilled_not_by_idleness() -> None:
    table = BucketTable(limit())
    drain(table, 1, 0.0)  # empty at t=0: full at t=5
    drain(table, 2, 1.0, tokens=1)  # 4 left at t=1: full at t=2
    drain(table, 3, 2.0, tokens=2)  # 3 left at t=2: full at t=4
    assert table.take(4, 1.5) is None  # none full yet: no room
    assert table.take(4, 2.0) == (True, 4.0)  # 2 (full at 2) goes, not 1 (the idlest)
    assert table.take(5, 3.5) == (True, 4.0)  # 4 (full at 3) goes before 3 (full at 4)
    assert table.take(6, 3.9) is None  # 3 is full at 4, 5 at 4.5, 1 at 5
    assert table.take(6, 4.0) == (True, 4.0)  # 3 goes
    assert table.take(1, 4.0) == pytest.approx((True, 3.0))  # 1 kept its state all along


def test_a_depleted_bucket_is_never_dropped_for_a_new_source() -> None:
    table = BucketTable(limit(max_buckets=2))
    drain(table, 1, 0.0)
    drain(table, 2, 0.0)
    assert [table.take(source, 1.0) for source in range(10, 1010)] == [None] * 1000
    assert len(table) == 2
    assert table.take(1, 1.0) == pytest.approx((True, 0.0))  # its state is intact
    assert table.take(3, 5.0) == (True, 4.0)  # 2 is full at t=5: dropped for 3


def test_a_token_taken_later_moves_the_refill_time_on() -> None:
    table = BucketTable(limit(max_buckets=1))
    assert table.take(1, 0.0) == (True, 4.0)  # full at t=1 (heap says 1)
    assert table.take(1, 0.5) == pytest.approx((True, 3.5))  # full at t=2 now
    assert table.take(2, 1.0) is None  # the heap entry (t=1) is corrected, not trusted
    assert table.take(2, 1.9) is None
    assert table.take(2, 2.0) == (True, 4.0)
    assert len(table._due) == len(table) == 1  # one heap entry a bucket, stale or not


def test_prune_drops_only_full_buckets_within_its_budget() -> None:
    table = BucketTable(limit(max_buckets=100))
    drain(table, 0, 0.0)  # full at t=5
    for source in range(1, 11):
        drain(table, source, 0.0, tokens=1)  # full at t=1
    assert table.prune(0.5) == 0
    assert table.prune(1.0, budget=4) == 4 and len(table) == 7
    assert table.prune(1.0) == 6 and len(table) == 1
    assert table.prune(4.9) == 0 and table.prune(5.0) == 1 and len(table) == 0


def test_a_smaller_max_buckets_after_a_reload_keeps_the_buckets() -> None:
    table = BucketTable(limit(max_buckets=3))
    for source in range(3):
        drain(table, source, 0.0)
    table.limit = limit(max_buckets=1)  # what the Limiter does after a reload
    assert table.take(9, 1.0) is None and len(table) == 3
    assert table.take(0, 1.0) == pytest.approx((True, 0.0))
    assert table.take(9, 5.0) is None  # 1 and 2 are full: dropped, but 0 is not (t=6)
    assert len(table) == 1 and table.take(9, 6.0) == (True, 4.0)


def two_rules(max_buckets: int) -> RuleSet:
    flood = f"""
[[rule]]
id = "flood-587"
dport = 587
action = "allow"
limit = {{ rate = "1/hour", burst = 1, exceed = "drop", max_buckets = {max_buckets} }}
"""
    return policy(extra=flood)


def test_a_flood_on_another_rule_never_frees_a_depleted_bucket() -> None:
    ruleset, limiter = two_rules(max_buckets=100), Limiter()
    for _ in range(5):
        limiter.decide(ruleset, conn("203.0.113.7"), 0.0)
    flood = [limiter.decide(ruleset, conn(f"100.64.{i >> 8}.{i & 255}", 587), 1.0)
             for i in range(1000)]  # fmt: skip
    assert [d.action for d in flood] == [Action.ALLOW] * 100 + [Action.DROP] * 900
    assert limiter.decide(ruleset, conn("203.0.113.7"), 2.0).action is Action.REJECT
    assert limiter.table_full == {"flood-587": 900}
    assert len(limiter) == 101


def test_a_full_table_gives_the_exceed_action_and_says_why() -> None:
    ruleset, limiter = two_rules(max_buckets=1), Limiter()
    limiter.decide(ruleset, conn("100.64.0.1", 587), 0.0)
    refused = limiter.decide(ruleset, conn("100.64.0.2", 587), 0.0)
    assert (refused.action, refused.rule_id, refused.log) == (Action.DROP, "flood-587", True)
    assert refused.limit is not None and refused.limit.table_full
    assert refused.limit.fields()["table_full"] is True
    assert refused.limit.fields()["exceeded"] is True
    assert "limit table is full (1 buckets, none refilled)" in refused.reason
    assert "new bucket 100.64.0.2 gets drop" in refused.reason


def test_table_full_is_reported_at_most_once_an_interval_with_the_count() -> None:
    ruleset, limiter = two_rules(max_buckets=1), Limiter()
    for i in range(4):
        limiter.decide(ruleset, conn(f"100.64.0.{i}", 587), 0.0)
    assert limiter.housekeeping(0.5) == [TableFullReport("flood-587", 3, 3, 1, "drop")]
    limiter.decide(ruleset, conn("100.64.0.9", 587), 1.0)
    assert limiter.housekeeping(1.0) == []
    assert limiter.housekeeping(0.5 + TABLE_FULL_LOG_INTERVAL - 0.1) == []
    [report] = limiter.housekeeping(0.5 + TABLE_FULL_LOG_INTERVAL)
    assert (report.count, report.total) == (1, 4)
    assert "'flood-587' is full: 1 new sources got its exceed action (drop)" in report.message
    assert report.fields() == {"rule": "flood-587", "count": 1, "total": 4,
                               "max_buckets": 1, "exceed": "drop"}  # fmt: skip
    assert limiter.housekeeping(1000.0) == [] and limiter.table_full == {"flood-587": 4}


def test_housekeeping_prunes_and_forgets_empty_tables() -> None:
    ruleset, limiter = policy(), Limiter()
    limiter.decide(ruleset, conn("203.0.113.1"), 0.0)
    limiter.decide(ruleset, conn("2001:db8:b12::1"), 0.0)
    assert limiter.housekeeping(11.0) == [] and len(limiter) == 2  # 4.9 of 5 tokens
    assert limiter.housekeeping(12.0) == [] and len(limiter) == 0
    assert limiter._tables == {}


def test_per_src_keys_an_ipv6_source_by_its_64() -> None:
    ruleset, limiter = policy(), Limiter()
    rotated = [conn(f"2001:db8:b12:7:{i:x}::{i}") for i in range(1, 7)]  # privacy addresses
    decisions = [limiter.decide(ruleset, c, 1.0) for c in rotated]
    assert [d.action for d in decisions] == [Action.ALLOW] * 5 + [Action.REJECT]
    assert {d.limit.key for d in decisions if d.limit} == {"2001:db8:b12:7::/64"}
    assert limiter.decide(ruleset, conn("2001:db8:b12:8::1"), 1.0).action is Action.ALLOW
    v4 = [limiter.decide(ruleset, conn(f"203.0.113.{i}"), 1.0) for i in range(1, 7)]
    assert {d.action for d in v4} == {Action.ALLOW}  # IPv4: one bucket an address


def test_per_src_with_prefix6_128_keys_each_address() -> None:
    text = BUSINESS.format(per="src", exceed="reject").replace('per = "src"', "prefix6 = 128")
    ruleset, limiter = compile_ruleset([(Path("/r/10.toml"), text)], lambda p: ""), Limiter()
    decisions = [limiter.decide(ruleset, conn(f"2001:db8:b12::{i}"), 1.0) for i in range(6)]
    assert {d.action for d in decisions} == {Action.ALLOW}
    assert decisions[0].limit is not None and decisions[0].limit.key == "2001:db8:b12::"


def test_a_reload_keeps_buckets_also_when_only_max_buckets_changed() -> None:
    limiter = Limiter()
    for _ in range(5):
        limiter.decide(two_rules(10), conn("203.0.113.7"), 1.0)
    limiter.decide(two_rules(10), conn("100.64.0.1", 587), 1.0)
    resized = two_rules(1)
    assert limiter.decide(resized, conn("203.0.113.7"), 1.0).action is Action.REJECT
    assert limiter.decide(resized, conn("100.64.0.2", 587), 1.0).action is Action.DROP
    assert limiter.table_full == {"flood-587": 1}


def test_bucket_keys_and_names() -> None:
    c4, c6 = conn("203.0.113.77"), conn("2001:db8:b12:3ff:4::1")
    per_src = limit("src", 32, 64)
    assert bucket_of(per_src, c4) == (4, c4.src)
    assert bucket_name(per_src, *bucket_of(per_src, c4)) == "203.0.113.77"
    assert bucket_name(per_src, *bucket_of(per_src, c6)) == "2001:db8:b12:3ff::/64"
    per_host = limit("src", 32, 128)
    assert bucket_name(per_host, *bucket_of(per_host, c6)) == "2001:db8:b12:3ff:4::1"
    by_prefix = limit("prefix", 20, 56)
    assert bucket_name(by_prefix, *bucket_of(by_prefix, c4)) == "203.0.112.0/20"
    assert bucket_name(by_prefix, *bucket_of(by_prefix, c6)) == "2001:db8:b12:300::/56"
    assert bucket_name(limit("rule", 0, 0), *bucket_of(limit("rule", 0, 0), c6)) == "rule"


def test_limited_decision_within_the_limit_keeps_the_rule() -> None:
    ruleset, limiter = policy(), Limiter()
    rule = rule_of(ruleset)
    result = limiter.take(rule, conn("203.0.113.7"), 0.0)
    decision = limited_decision(rule, result)
    assert (decision.action, decision.rule_id, decision.limit) == (Action.ALLOW, rule.id, result)
    assert decision.reason.startswith(rule.decision.reason)
    assert "bucket 203.0.113.7: 4.00 of 5 tokens left" in decision.reason
