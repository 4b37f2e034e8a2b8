"""Benchmark: the rate limiter's bucket tables: memory a bucket, and the cost of a decision.

One rule's table (`portguard.core.policy.limits.BucketTable`) filled to its default `max_buckets`
with depleted buckets, for IPv4 and IPv6 (per src: /32 and /64) sources. Figures:

- memory: bytes a bucket (tracemalloc: the bucket, its key, its dict slot, its heap entry) and
  a full table;
- decision: microseconds a take for a new source refused because the table is full, a known
  source, and a new source that needs a refilled bucket dropped first.

Run: .venv/bin/python bench/bench_limits.py [--quick]   (--quick: 200,000 takes instead of 1M)
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Callable

from portguard.core.policy.limits import BucketTable
from portguard.core.policy.model import DEFAULT_MAX_BUCKETS, Action, Limit

LIMIT = Limit("1/hour", 1 / 3600, 2, "src", 32, 64, Action.REJECT, DEFAULT_MAX_BUCKETS)
BASES = {4: 0x64400000, 6: 0x20010DB8 << 96}  # 100.64.0.0, 2001:db8::


def source(version: int, index: int) -> int:
    """The index-th bucket key: consecutive IPv4 addresses, consecutive IPv6 /64s."""
    return version << 128 | (BASES[version] + (index << (64 if version == 6 else 0)))


def filled(version: int) -> tuple[BucketTable, int]:
    """(a full table of depleted buckets, the bytes it holds)."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    table = BucketTable(LIMIT)
    for index in range(DEFAULT_MAX_BUCKETS):
        table.take(source(version, index), 0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return table, sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def per_take(count: int, take: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for index in range(count):
        take(index)
    return (time.perf_counter() - start) / count * 1e6


def measure(version: int, count: int) -> None:
    n = DEFAULT_MAX_BUCKETS
    table, size = filled(version)
    print(f"IPv{version}: {n} buckets, {size / n:.0f} bytes a bucket, "
          f"{size / 2**20:.1f} MiB a full table")  # fmt: skip
    refused = per_take(count, lambda i: table.take(source(version, n + i), 1.0))
    known = per_take(count, lambda i: table.take(source(version, i % n), 2.0))
    later = 10_000.0  # every bucket is full again: each new source drops one
    dropped = per_take(count, lambda i: table.take(source(version, 2 * n + i), later + i))
    print(f"  us a take: new source, table full {refused:.2f}; known source {known:.2f}; "
          f"new source dropping a full bucket {dropped:.2f}")  # fmt: skip


def main(argv: list[str]) -> int:
    count = 200_000 if "--quick" in argv else 1_000_000
    for version in (4, 6):
        measure(version, count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
