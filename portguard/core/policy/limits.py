"""Rate limits at run time: token buckets, pure (``now`` is passed in, the clock is never read).

A rule's ``limit`` gives a bucket of ``burst`` tokens that refills at the limit's rate. Each
connection the rule decides takes one token; a connection that finds the bucket empty gets the
limit's ``exceed`` action from the same rule.

The Limiter belongs to the gate and outlives reloads: each limited rule has its own table of
buckets, keyed by (rule id, limit), so a reload that keeps a rule and its limit keeps its
buckets, and a changed limit starts with fresh ones.

Memory is bounded per rule (``max_buckets``), so sources on one rule can never push out the
buckets of another. Within a rule, only a *full* bucket (refilled to ``burst``) is ever
dropped: it holds nothing a new bucket would not. A depleted bucket is never dropped to make
room; when a rule's table holds only buckets that are not full yet, a new source gets the
limit's ``exceed`` action and the rule's ``limit-table-full`` count goes up. A spoofed flood
can therefore fill a rule's table (and lock out new sources of that rule until buckets refill),
but it cannot free a limited bot.

Each table keeps a min-heap of the time each bucket is full again. A heap entry is a lower
bound: a token taken later moves the true time on without touching the heap, and the entry is
corrected when it comes up. So a known source costs O(1), a new one an O(log n) push, and
making room or pruning pops only entries that are due (amortised over the tokens taken).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from portguard.core import inet
from portguard.core.policy.model import Connection, Decision, Limit, LimitResult
from portguard.core.policy.ruleset import CompiledRule, RuleSet

TABLE_FULL_LOG_INTERVAL = 60.0  # seconds between two limit-table-full events of one rule
PRUNE_BUDGET = 1024  # full buckets one prune drops per rule at most (keeps a round short)

SourceKey = int  # (IP version << 128) | masked source address
TableKey = tuple[str, Limit]  # rule id, limit (max_buckets is not part of its equality)


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

    def full_at(self, limit: Limit) -> float:
        """When the bucket holds ``burst`` tokens again (if no token is taken before)."""
        return self.stamp + (limit.burst - self.tokens) / limit.per_second


def bucket_of(limit: Limit, conn: Connection) -> tuple[int, int]:
    """The masked source address that names the connection's bucket."""
    bits = 32 if conn.version == 4 else 128
    host_bits = bits - (limit.prefix4 if conn.version == 4 else limit.prefix6)
    return conn.version, conn.src >> host_bits << host_bits


def bucket_name(limit: Limit, version: int, masked: int) -> str:
    """``203.0.113.7`` or ``2001:db8:1:2::/64`` per src, ``203.0.113.0/24`` per prefix,
    ``rule`` per rule."""
    if limit.per == "rule":
        return "rule"
    family, size = (inet.AF_INET, 4) if version == 4 else (inet.AF_INET6, 16)
    address = inet.inet_ntop(family, masked.to_bytes(size, "big"))
    prefix = limit.prefix4 if version == 4 else limit.prefix6
    if limit.per == "src" and prefix == (32 if version == 4 else 128):
        return address
    return f"{address}/{prefix}"


class BucketTable:
    """One limited rule's buckets: at most ``limit.max_buckets``, full ones dropped first,
    depleted ones never."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self._buckets: dict[SourceKey, _Bucket] = {}
        self._due: list[tuple[float, SourceKey]] = []  # (full again at or after, source)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, source: SourceKey, now: float) -> tuple[bool, float] | None:
        """(a token was taken, tokens left) for ``source``; None when the table has no room
        for a new source (every bucket in it still short of full)."""
        limit = self.limit
        bucket = self._buckets.get(source)
        if bucket is None:
            if not self._make_room(now):
                return None
            bucket = self._buckets[source] = _Bucket(float(limit.burst), now)
            bucket.tokens -= 1.0  # a new bucket is full: the first token is always there
            heapq.heappush(self._due, (bucket.full_at(limit), source))
            return True, bucket.tokens
        allowed = bucket.refill(limit, now) >= 1.0
        if allowed:
            bucket.tokens -= 1.0  # its heap entry is now a lower bound: corrected when due
        return allowed, bucket.tokens

    def prune(self, now: float, budget: int = PRUNE_BUDGET) -> int:
        """Drop up to ``budget`` buckets that are full at ``now``; how many were dropped."""
        dropped = 0
        while dropped < budget and self._drop_one_full(now):
            dropped += 1
        return dropped

    def _make_room(self, now: float) -> bool:
        while len(self._buckets) >= self.limit.max_buckets:
            if not self._drop_one_full(now):
                return False
        return True

    def _drop_one_full(self, now: float) -> bool:
        """Drop the bucket that was full first, if one is full at ``now``."""
        due, limit = self._due, self.limit
        while due and due[0][0] <= now:
            source = due[0][1]
            full_at = self._buckets[source].full_at(limit)
            if full_at <= now:
                heapq.heappop(due)
                del self._buckets[source]
                return True
            heapq.heapreplace(due, (full_at, source))  # tokens were taken since: move it on
        return False


@dataclass(frozen=True, slots=True)
class TableFullReport:
    """New sources a rule refused for want of room since its last report."""

    rule: str
    count: int  # since the last report
    total: int  # since the daemon started
    max_buckets: int
    exceed: str

    @property
    def message(self) -> str:
        return (
            f"rate limit table of rule '{self.rule}' is full: {self.count} new sources got "
            f"its exceed action ({self.exceed}); all {self.max_buckets} buckets are still "
            "refilling (a flood of sources, or max_buckets too small)"
        )

    def fields(self) -> dict[str, object]:
        return {"rule": self.rule, "count": self.count, "total": self.total,
                "max_buckets": self.max_buckets, "exceed": self.exceed}  # fmt: skip


class Limiter:
    """The token buckets of every limited rule, one table per rule. Mutable; one per gate."""

    def __init__(self) -> None:
        self._tables: dict[TableKey, BucketTable] = {}
        self.table_full: dict[str, int] = {}  # rule id -> new sources refused for want of room
        self._unreported: dict[str, tuple[int, Limit]] = {}
        self._reported_at: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def take(self, rule: CompiledRule, conn: Connection, now: float) -> LimitResult:
        """Take a token from ``conn``'s bucket for ``rule`` (which must have a limit)."""
        limit = rule.limit
        if limit is None:
            raise ValueError(f"rule {rule.id!r} has no limit")
        table = self._tables.get((rule.id, limit))
        if table is None:
            table = self._tables[(rule.id, limit)] = BucketTable(limit)
        table.limit = limit  # the newest max_buckets (not part of the key)
        version, masked = bucket_of(limit, conn)
        taken = table.take(version << 128 | masked, now)
        name = bucket_name(limit, version, masked)
        if taken is None:
            self._count_table_full(rule.id, limit)
            return LimitResult(False, name, 0.0, limit, table_full=True)
        return LimitResult(taken[0], name, taken[1], limit)

    def decide(self, ruleset: RuleSet, conn: Connection, now: float) -> Decision:
        """RuleSet.decide with the deciding rule's limit applied (what the gate calls)."""
        rule = ruleset.match(conn)
        if rule is None:
            return ruleset.default
        if rule.limit is None:
            return rule.decision
        return limited_decision(rule, self.take(rule, conn, now))

    def prune(self, now: float, budget: int = PRUNE_BUDGET) -> int:
        """Drop buckets that have refilled to full (up to ``budget`` a rule), and tables left
        empty (rules a reload removed or changed); how many buckets were dropped."""
        dropped = 0
        for key, table in list(self._tables.items()):
            dropped += table.prune(now, budget)
            if not table:
                del self._tables[key]
        return dropped

    def housekeeping(self, now: float) -> list[TableFullReport]:
        """What the worker calls every round: prune, then the table-full reports that are due
        (at most one a rule every TABLE_FULL_LOG_INTERVAL seconds)."""
        self.prune(now)
        reports = []
        for rule, (count, limit) in list(self._unreported.items()):
            if now - self._reported_at.get(rule, float("-inf")) < TABLE_FULL_LOG_INTERVAL:
                continue
            del self._unreported[rule]
            self._reported_at[rule] = now
            reports.append(TableFullReport(rule, count, self.table_full[rule],
                                           limit.max_buckets, str(limit.exceed)))  # fmt: skip
        return reports

    def _count_table_full(self, rule: str, limit: Limit) -> None:
        self.table_full[rule] = self.table_full.get(rule, 0) + 1
        count, _ = self._unreported.get(rule, (0, limit))
        self._unreported[rule] = (count + 1, limit)


def limited_decision(rule: CompiledRule, result: LimitResult) -> Decision:
    """The rule's decision within its limit; past it, the limit's exceed action. An exceeded
    limit is always logged, also for a rule with ``log = false``."""
    limit = result.limit
    state = f"bucket {result.key}: {result.tokens:.2f} of {limit.burst} tokens left"
    if result.allowed:
        reason = f"{rule.decision.reason}; within limit {limit.rate} ({state})"
        action, log = rule.action, rule.log
    elif result.table_full:
        reason = (
            f"matched rule '{rule.id}' but its limit table is full ({limit.max_buckets} "
            f"buckets, none refilled): new bucket {result.key} gets {limit.exceed}"
        )
        action, log = limit.exceed, True
    else:
        reason = (
            f"matched rule '{rule.id}' but exceeded its limit {limit.rate} per "
            f"{limit.per_text}, burst {limit.burst} ({state}): {limit.exceed}"
        )
        action, log = limit.exceed, True
    return Decision(action, rule.id, rule.ruleset, rule.description, reason, log, result)
