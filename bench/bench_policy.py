"""Benchmark: policy decisions with 10, 100,000 and 1,000,000 CIDRs; loading a 1M-line list file.

The policy is the shipped ISP rules with the `subscribers` set read from a list file, plus five
rules that look the source up in that set and then fail on dst (so that a decision looks the big
set up six or seven times). The list mixes IPv4 /32 and /24 with IPv6 /64 and /56 (a quarter
each); the 10-CIDR list is the first ten lines of the big one, so every connection takes the same
rule path whatever the size. Figures:

- decision: best-of-N microseconds per `RuleSet.decide` over the same 2,000 connections
  (70% from the subscriber set), runs interleaved so that noise hits every size alike, and the
  ratio to the 10-CIDR policy (target <= 1.5);
- load: `load_ruleset` of the 1M-entry policy from disk (read, parse, hash, build);
- reload: a second load with the first policy passed as `previous` (what the daemon does: the
  unchanged list file is hashed, not parsed again), and a cold second load without it;
- memory: bytes held by the compiled 1M policy (tracemalloc, after a collection), and the peak
  while loading.

Run: .venv/bin/python bench/bench_policy.py [--quick]   (--quick: 100k instead of 1M)
"""

from __future__ import annotations

import gc
import ipaddress
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from portguard.core.policy import Connection, Direction, RuleSet
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import RULES_DIR

FILLER_RULES = 5
CONNECTIONS = 2000
REPEATS = 15
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))


def subscriber_lines(count: int, seed: int = 64) -> list[str]:
    """``count`` distinct CIDRs: IPv4 /32 and /24 anywhere, IPv6 /64 and /56 in 2001:db8::/32,
    in random order."""
    rng = random.Random(seed)
    kinds = [(4, 32), (6, 64), (4, 24), (6, 56)]
    seen: set[tuple[int, int, int]] = set()
    lines: list[str] = []
    while len(lines) < count:
        version, length = kinds[len(lines) % 4]
        if version == 4:
            first = rng.getrandbits(length) << (32 - length)
        else:
            first = V6_BASE | rng.getrandbits(length - 32) << (128 - length)
        if (version, length, first) in seen:
            continue
        seen.add((version, length, first))
        address = ipaddress.IPv4Address(first) if version == 4 else ipaddress.IPv6Address(first)
        lines.append(f"{address}/{length}" if length not in (32, 128) else str(address))
    return lines


def write_policy(lines: list[str], directory: Path) -> Path:
    rules = directory / f"rules-{len(lines)}"
    (rules / "lists").mkdir(parents=True)
    shipped = (RULES_DIR / "10-isp.toml").read_text()
    head, _, tail = shipped.partition("[[rule]]")
    head = head.replace(
        'cidrs = ["100.64.0.0/10", "2001:db8:64::/48"]', 'files = ["lists/subscribers.txt"]'
    )
    fillers = "".join(
        f'[[rule]]\nid = "filler-{i}"\nsrc = "subscribers"\ndst = "192.0.2.{i}"\n'
        f'dport = 25\ndirection = "outbound"\naction = "drop"\n\n'
        for i in range(FILLER_RULES)
    )
    (rules / "10-isp.toml").write_text(head + fillers + "[[rule]]" + tail)
    (rules / "lists" / "subscribers.txt").write_text("\n".join(lines) + "\n")
    (rules / "lists" / "business.txt").write_text((RULES_DIR / "lists/business.txt").read_text())
    return rules


def connections(rng: random.Random, lines: list[str], big: RuleSet) -> list[Connection]:
    """70% from the CIDRs of ``lines``, the rest random IPv4 sources; other addresses (the rest
    of the sources, every destination) outside the big set, so that every policy size decides
    each connection alike."""
    subscribers = next(rule.src for rule in big.rules if rule.id == "block-25")
    assert subscribers is not None
    result: list[Connection] = []
    while len(result) < CONNECTIONS:
        if rng.random() < 0.7:
            network = ipaddress.ip_network(rng.choice(lines))
            address = network.network_address + rng.randrange(min(network.num_addresses, 2**32))
        else:
            address = ipaddress.ip_address(rng.getrandbits(32))
            if subscribers.contains(4, int(address)):
                continue
        dst = rng.getrandbits(32) if address.version == 4 else rng.getrandbits(128)
        if subscribers.contains(address.version, dst):
            continue
        port = rng.choice([25, 25, 25, 465, 587, 80])
        direction = rng.choice([Direction.OUTBOUND] * 3 + [Direction.INBOUND])
        result.append(Connection(address.version, int(address), dst, port, direction))
    return result


def per_decision_us(rulesets: list[RuleSet], conns: list[Connection]) -> list[float]:
    """Best time per decision for each ruleset; runs alternate so that noise hits all alike."""
    best = [float("inf")] * len(rulesets)
    for _ in range(REPEATS):
        for index, ruleset in enumerate(rulesets):
            decide = ruleset.decide
            start = time.perf_counter()
            for conn in conns:
                decide(conn)
            best[index] = min(best[index], time.perf_counter() - start)
    return [seconds / len(conns) * 1e6 for seconds in best]


def timed_load(rules: Path, previous: RuleSet | None = None) -> tuple[RuleSet, float]:
    start = time.perf_counter()
    ruleset = load_ruleset([rules], previous=previous)
    return ruleset, time.perf_counter() - start


def memory_of_load(rules: Path) -> tuple[int, int]:
    """(bytes held by the compiled policy, peak bytes while loading)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ruleset = load_ruleset([rules])
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del ruleset
    return held - before, peak - before


def main() -> int:
    big_count = 100_000 if "--quick" in sys.argv else 1_000_000
    big = subscriber_lines(big_count)
    sizes = [big[:10], big[:100_000], big] if big_count > 100_000 else [big[:10], big]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [write_policy(lines, Path(tmp)) for lines in sizes]
        loaded = [timed_load(rules) for rules in dirs]
        rulesets = [ruleset for ruleset, _ in loaded]
        _, reload_seconds = timed_load(dirs[-1], previous=rulesets[-1])
        _, cold_seconds = timed_load(dirs[-1])
        held, peak = memory_of_load(dirs[-1])
        list_bytes = (dirs[-1] / "lists" / "subscribers.txt").stat().st_size
    conns = connections(random.Random(25), sizes[0], rulesets[-1])
    agree = all(len({r.decide(c) for r in rulesets}) == 1 for c in conns)
    costs = per_decision_us(rulesets, conns)
    print(f"rules per policy: {len(rulesets[0].rules)}; connections: {len(conns)}")
    for lines, cost, (_, seconds) in zip(sizes, costs, loaded, strict=True):
        print(
            f"{len(lines):>9,} CIDRs: {cost:6.2f} us/decision  ratio {cost / costs[0]:5.2f}"
            f"  (load {seconds * 1e3:8.1f} ms)"
        )
    print(f"same decision at every size: {agree}")
    print(f"list file: {len(big):,} lines, {list_bytes / 1e6:.1f} MB")
    print(f"load   {len(big):,}: {loaded[-1][1]:6.2f} s")
    print(
        f"reload {len(big):,}: {reload_seconds:6.2f} s (previous policy given: list not re-parsed)"
    )
    print(f"cold second load:     {cold_seconds:6.2f} s")
    print(
        f"memory of the compiled policy: {held / 1e6:6.1f} MB "
        f"(peak while loading {peak / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
