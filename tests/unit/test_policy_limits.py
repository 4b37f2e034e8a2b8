"""Token buckets: per source, per prefix, per rule; refill with `now`; reloads; bounded memory."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from portguard.policy.compiler import compile_ruleset
from portguard.policy.limits import Limiter, bucket_name, bucket_of, limited_decision
from portguard.policy.model import Action, Connection, Direction, Limit
from portguard.policy.ruleset import CompiledRule, RuleSet

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


def test_memory_is_bounded_and_full_buckets_go_first() -> None:
    ruleset, limiter = policy(), Limiter(capacity=3)
    for _ in range(5):
        limiter.decide(ruleset, conn("203.0.113.1"), 0.0)  # empty bucket: state worth keeping
    limiter.decide(ruleset, conn("203.0.113.2"), 0.0)  # 4 tokens: full again at t=12
    limiter.decide(ruleset, conn("203.0.113.3"), 0.0)
    limiter.decide(ruleset, conn("203.0.113.4"), 12.0)  # .1 (idlest) is not full, .2 is
    assert len(limiter) == 3 and limiter.evicted == 0
    kept = limiter.take(rule_of(ruleset), conn("203.0.113.1"), 12.0)
    assert kept.allowed and kept.tokens == pytest.approx(0.0)  # a fresh bucket would hold 4
    for last in range(5, 10):  # .3 (full) goes first, then the idlest: evicted and counted
        limiter.decide(ruleset, conn(f"203.0.113.{last}"), 12.0)
    assert len(limiter) == 3 and limiter.evicted == 4
    with pytest.raises(ValueError, match="at least 1"):
        Limiter(capacity=0)


def test_prune_drops_full_buckets_only() -> None:
    ruleset, limiter = policy(), Limiter()
    for _ in range(5):
        limiter.decide(ruleset, conn("203.0.113.1"), 0.0)
    limiter.decide(ruleset, conn("203.0.113.2"), 0.0)
    assert limiter.prune(20.0) == 1  # .2 refilled; .1 has 1.7 of 5 tokens
    assert len(limiter) == 1
    assert limiter.prune(1000.0) == 1 and len(limiter) == 0


def limit(per: str, prefix4: int, prefix6: int) -> Limit:
    return Limit("1/second", 1.0, 1, per, prefix4, prefix6, Action.REJECT)  # type: ignore[arg-type]


def test_bucket_keys_and_names() -> None:
    c4, c6 = conn("203.0.113.77"), conn("2001:db8:b12:3ff:4::1")
    assert bucket_of(limit("src", 32, 128), c4) == (4, c4.src)
    assert bucket_name(limit("src", 32, 128), *bucket_of(limit("src", 32, 128), c4)) == (
        "203.0.113.77"
    )
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
