"""Benchmark: microseconds per policy decision with 10 and with 100,000 CIDRs in a set.

A 10-rule policy (the shipped ISP rules plus five rules that look up the big set and then fail
on dst) decides the same 2,000 random connections with a `subscribers` set of 10 CIDRs and one of
100,000 CIDRs. Lookups bisect merged intervals, so the ratio should stay near 1.

Run: .venv/bin/python bench/bench_policy.py
"""

from __future__ import annotations

import ipaddress
import random
import sys
import tempfile
import time
from pathlib import Path

from portguard.policy import Connection, Direction, RuleSet, load_ruleset
from portguard.shipped import RULES_DIR

FILLER_RULES = 5
CONNECTIONS = 2000
REPEATS = 15


def subscriber_cidrs(count: int) -> list[str]:
    """``count`` non-adjacent /32s and /120s, so that merging cannot shrink the set.

    The first entries are the same for every count: a small set is a subset of a big one."""
    base4 = int(ipaddress.IPv4Address("100.64.0.0"))
    base6 = int(ipaddress.IPv6Address("2001:db8:64::"))
    half = count // 2
    v4 = [str(ipaddress.IPv4Address(base4 + 2 * i)) for i in range(count - half)]
    v6 = [f"{ipaddress.IPv6Address(base6 + 512 * i)}/120" for i in range(half)]
    return v4 + v6


def policy_text(cidrs: list[str]) -> str:
    shipped = (RULES_DIR / "10-isp.toml").read_text()
    head, _, rules = shipped.partition("[[rule]]")
    head = head.replace(
        'cidrs = ["100.64.0.0/10", "2001:db8:64::/48"]', f"cidrs = {cidrs!r}".replace("'", '"')
    )
    fillers = "".join(
        f'[[rule]]\nid = "filler-{i}"\nsrc = "subscribers"\ndst = "192.0.2.{i}"\n'
        f'dport = 25\ndirection = "outbound"\naction = "drop"\n\n'
        for i in range(FILLER_RULES)
    )
    return head + fillers + "[[rule]]" + rules


def load(cidrs: list[str], workdir: Path) -> tuple[RuleSet, float]:
    rules = workdir / f"rules-{len(cidrs)}"
    (rules / "lists").mkdir(parents=True)
    (rules / "10-isp.toml").write_text(policy_text(cidrs))
    (rules / "lists" / "business.txt").write_text((RULES_DIR / "lists/business.txt").read_text())
    start = time.perf_counter()
    ruleset = load_ruleset([rules])
    return ruleset, time.perf_counter() - start


def connections(rng: random.Random, cidrs: list[str]) -> list[Connection]:
    result = []
    for _ in range(CONNECTIONS):
        if rng.random() < 0.7:
            address = ipaddress.ip_network(rng.choice(cidrs)).network_address
        else:
            address = ipaddress.ip_address(rng.getrandbits(32))
        dst = ipaddress.ip_address(rng.getrandbits(32) if address.version == 4 else 2**127)
        port = rng.choice([25, 25, 25, 465, 587, 80])
        direction = rng.choice([Direction.OUTBOUND] * 3 + [Direction.INBOUND])
        result.append(Connection(address.version, int(address), int(dst), port, direction))
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


def main() -> int:
    rng = random.Random(25)
    small, big = subscriber_cidrs(10), subscriber_cidrs(100_000)
    conns = connections(rng, small)  # subscribers are in both sets: same rule paths in both
    with tempfile.TemporaryDirectory() as tmp:
        small_set, small_load = load(small, Path(tmp))
        big_set, big_load = load(big, Path(tmp))
    agree = sum(small_set.decide(c) == big_set.decide(c) for c in conns)
    small_us, big_us = per_decision_us([small_set, big_set], conns)
    print(f"rules per policy:        {len(small_set.rules)}")
    print(f"10 CIDRs:      {small_us:6.2f} us/decision (load {small_load * 1e3:7.1f} ms)")
    print(f"100,000 CIDRs: {big_us:6.2f} us/decision (load {big_load * 1e3:7.1f} ms)")
    print(f"ratio 100k/10: {big_us / small_us:6.2f}")
    print(f"same decision: {agree} of {len(conns)} connections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
