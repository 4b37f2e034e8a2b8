"""Rate limits at run time: token buckets, pure (``now`` is passed in, the clock is never read).

A rule's ``limit`` gives a bucket of ``burst`` tokens that refills at the limit's rate. Each
connection the rule decides takes one token; a connection that finds the bucket empty gets the
limit's ``exceed`` action from the same rule.

The Limiter belongs to the gate and outlives reloads: a bucket is keyed by (rule id, limit,
bucket key), so a reload that keeps a rule and its limit keeps its buckets, and a changed limit
starts with fresh ones. Memory is bounded: past ``capacity`` buckets, the ones idle longest are
evicted, full ones first (a full bucket holds nothing a new one would not).
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from itertools import islice

from portguard.policy.model import Connection, Decision, Limit, LimitResult
from portguard.policy.ruleset import CompiledRule, RuleSet

DEFAULT_CAPACITY = 100_000
EVICTION_SCAN = 32  # idle buckets looked at for a full one before the idlest is evicted

BucketKey = tuple[str, Limit, int, int]  # rule id, limit, IP version, masked source


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def refill(self, limit: Limit, now: float) -> float:
        """Tokens at ``now``: the bucket refills while idle, up to the burst."""
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(float(limit.burst), self.tokens + elapsed * limit.per_second)
        self.stamp = max(self.stamp, now)
        return self.tokens


def bucket_of(limit: Limit, conn: Connection) -> tuple[int, int]:
    """The masked source address that names the connection's bucket."""
    bits = 32 if conn.version == 4 else 128
    host_bits = bits - (limit.prefix4 if conn.version == 4 else limit.prefix6)
    return conn.version, conn.src >> host_bits << host_bits


def bucket_name(limit: Limit, version: int, masked: int) -> str:
    """``203.0.113.7`` per src, ``203.0.113.0/24`` per prefix, ``rule`` per rule."""
    if limit.per == "rule":
        return "rule"
    family, size = (socket.AF_INET, 4) if version == 4 else (socket.AF_INET6, 16)
    address = socket.inet_ntop(family, masked.to_bytes(size, "big"))
    if limit.per == "src":
        return address
    return f"{address}/{limit.prefix4 if version == 4 else limit.prefix6}"


class Limiter:
    """The token buckets of every limited rule. Mutable; one per gate."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._buckets: OrderedDict[BucketKey, _Bucket] = OrderedDict()  # idlest first
        self.evicted = 0  # buckets dropped for room while not yet full (state lost)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, rule: CompiledRule, conn: Connection, now: float) -> LimitResult:
        """Take a token from ``conn``'s bucket for ``rule`` (which must have a limit)."""
        limit = rule.limit
        if limit is None:
            raise ValueError(f"rule {rule.id!r} has no limit")
        version, masked = bucket_of(limit, conn)
        key = (rule.id, limit, version, masked)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(float(limit.burst), now)
        else:
            self._buckets.move_to_end(key)
        allowed = bucket.refill(limit, now) >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        return LimitResult(allowed, bucket_name(limit, version, masked), bucket.tokens, limit)

    def decide(self, ruleset: RuleSet, conn: Connection, now: float) -> Decision:
        """RuleSet.decide with the deciding rule's limit applied (what the gate calls)."""
        rule = ruleset.match(conn)
        if rule is None:
            return ruleset.default
        if rule.limit is None:
            return rule.decision
        return limited_decision(rule, self.take(rule, conn, now))

    def prune(self, now: float) -> int:
        """Drop every bucket that has refilled to full; returns how many. Call it now and
        then (e.g. once a minute) to give memory back after a burst of sources."""
        full = [key for key, bucket in self._buckets.items() if _is_full(key, bucket, now)]
        for key in full:
            del self._buckets[key]
        return len(full)

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.capacity:
            return
        for key, bucket in islice(self._buckets.items(), EVICTION_SCAN):
            if _is_full(key, bucket, now):
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
        self.evicted += 1


def _is_full(key: BucketKey, bucket: _Bucket, now: float) -> bool:
    limit = key[1]
    return bucket.tokens + max(0.0, now - bucket.stamp) * limit.per_second >= limit.burst


def limited_decision(rule: CompiledRule, result: LimitResult) -> Decision:
    """The rule's decision within its limit; past it, the limit's exceed action. An exceeded
    limit is always logged, also for a rule with ``log = false``."""
    limit = result.limit
    state = f"bucket {result.key}: {result.tokens:.2f} of {limit.burst} tokens left"
    if result.allowed:
        reason = f"{rule.decision.reason}; within limit {limit.rate} ({state})"
        action, log = rule.action, rule.log
    else:
        reason = (
            f"matched rule '{rule.id}' but exceeded its limit {limit.rate} per "
            f"{limit.per_text}, burst {limit.burst} ({state}): {limit.exceed}"
        )
        action, log = limit.exceed, True
    return Decision(action, rule.id, rule.ruleset, rule.description, reason, log, result)
