"""The nftables deny cache: its table text (checked by the kernel with ``nft -c`` in a fresh
network namespace when root may), the status check, the listing parsers and the rotation's
commands (through a fake runner)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from portguard.io.hooks import nftcache
from portguard.io.hooks.backend import SourceLimit
from portguard.io.hooks.nftables import NftablesBackend, parse_table, ruleset, table_problems
from tests.unit.test_hookrules import FakeRunner, spec

CACHED = spec(deny_cache=True, per_source=SourceLimit(200, 1000), chains=("forward", "output"))
MAP_B = json.dumps({"nftables": [{"metainfo": {}}, {"map": {
    "name": "cache_gen", "elem": [["tcp", {"jump": {"target": "cache_b"}}]]}}]})  # fmt: skip
HITS = json.dumps({"nftables": [{"metainfo": {}}, {"set": {"name": "cache_hits4_a", "elem": [
    {"elem": {"val": {"concat": ["100.64.10.10", "198.51.100.25", 25]},
              "counter": {"packets": 17998, "bytes": 1}}},
    {"elem": {"val": {"concat": ["100.64.10.10", "198.51.100.26", 25]},
              "counter": {"packets": 2, "bytes": 1}}}]}}]})  # fmt: skip


def test_the_table_declares_two_generations_and_the_map_picks_the_first() -> None:
    text = ruleset(CACHED)
    for gen in ("a", "b"):
        for name in ("r4", "d4", "r6", "d6", "hits4", "hits6"):
            assert f"\tset cache_{name}_{gen} {{\n" in text
        assert f"\tchain cache_{gen} {{\n" in text
    assert "elements = { tcp : jump cache_a }" in text
    assert text.count("\t\tmeta l4proto vmap @cache_gen\n") == 2  # first in each base chain
    assert "counter deny_cache_answered {" in text
    assert "cache_" not in ruleset(spec())


def test_a_generation_adds_a_cached_deny_and_answers_new_unmarked_syns() -> None:
    rules = list(nftcache.cache_rules(spec(ports=(25,)), "b"))
    assert rules[0] == ("meta nfproto ipv4 meta mark & 0x13000000 == 0x12000000 "
                        "add @cache_r4_b { ip saddr . ip daddr . tcp dport }")  # fmt: skip
    assert rules[4] == (
        "meta nfproto ipv4 tcp flags & (fin | syn | rst | ack) == syn tcp dport { 25 } "
        "ct state new meta mark & 0x1f000000 == 0x00000000 ip saddr . ip daddr . tcp dport "
        "@cache_r4_b add @cache_hits4_b { ip saddr . ip daddr . tcp dport } "
        'counter name "deny_cache_answered" reject with tcp reset'
    )
    assert rules[7].startswith("meta nfproto ipv6 ") and rules[7].endswith(" drop")
    assert "ip6 saddr . ip6 daddr . tcp dport @cache_d6_b add @cache_hits6_b" in rules[7]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
                    reason="nft -c needs root (in a network namespace of its own)")  # fmt: skip
def test_the_kernel_takes_the_table() -> None:
    """This kernel has no nft queue statement: the queue rule is swapped for a drop."""
    text = ruleset(CACHED).replace("queue num 0", "drop")
    proc = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=text, text=True,
                          capture_output=True, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def listing(rules_per_chain: dict[str, int]) -> str:
    """A terse listing with the given chains (hooked ones are base chains)."""
    lines = ["table inet portguard {", "\tcounter invalid_dropped {", "\t\tpackets 0 bytes 0",
             "\t}", "\tcounter per_source_dropped {", "\t\tpackets 0 bytes 0", "\t}",
             "\tcounter deny_cache_answered {", "\t\tpackets 42 bytes 0", "\t}"]  # fmt: skip
    for chain, count in rules_per_chain.items():
        lines.append(f"\tchain {chain} {{")
        if not chain.startswith("cache_"):
            lines.append(f"\t\ttype filter hook {chain} priority filter; policy accept;")
        lines += [f"\t\trule {i}" for i in range(count - 1)]
        lines += ["\t\tqueue num 0" if not chain.startswith("cache_") else "\t\trule last", "\t}"]
    return "\n".join([*lines, "}", ""])


def test_status_accepts_either_generation_and_compares_the_cache_chains() -> None:
    base = len(ruleset(CACHED).split("chain forward {")[1].split("\t}")[0].splitlines()) - 2
    counts = {"forward": base, "output": base, "cache_a": 8, "cache_b": 8}
    table = parse_table(listing(counts))
    assert table_problems(table, CACHED) == []
    assert table.counters["deny_cache_answered"] == 42
    broken = parse_table(listing({**counts, "cache_b": 7}))
    assert table_problems(broken, CACHED) == ["chain cache_b has 7 rules, 8 expected"]
    missing = parse_table(listing({"forward": base, "output": base, "cache_a": 8}))
    assert table_problems(missing, CACHED) == ["no chain cache_b"]
    assert table_problems(table, None) == []  # no spec: the cache chains are no hooks


def test_the_status_counts_the_answers() -> None:
    runner = FakeRunner({("nft", "-t", "list"): (0, listing({"forward": 3}), "")})
    assert NftablesBackend(runner).status(CACHED).counters["deny_cache"] == 42


def test_parsers() -> None:
    assert nftcache.in_force(MAP_B) == "b"
    with pytest.raises(Exception, match="no generation"):
        nftcache.in_force(json.dumps({"nftables": [{"map": {"elem": []}}]}))
    assert nftcache.parse_hits(HITS) == {
        (4, 0x64400A0A, 0xC6336419, 25): 17998,
        (4, 0x64400A0A, 0xC633641A, 25): 2,
    }


def test_a_rotation_switches_the_map_in_one_transaction_then_reads_and_flushes() -> None:
    runner = FakeRunner({("nft", "-j", "list", "map"): (0, MAP_B, ""),
                         ("nft", "-j", "list", "set"): (0, HITS, "")})  # fmt: skip
    cache = nftcache.NftCache(runner)
    cache.rotate()  # b is in force: a becomes it, b is frozen
    assert runner.stdin_of("nft") == [
        "delete element inet portguard cache_gen { tcp }\n"
        "add element inet portguard cache_gen { tcp : jump cache_a }\n"
    ]
    runner.answers[("nft", "-j", "list", "map")] = (0, MAP_B.replace("cache_b", "cache_a"), "")
    hits = cache.read_frozen()
    assert hits[(4, 0x64400A0A, 0xC6336419, 25)] == 2 * 17998  # the fake lists both families
    read = [argv[-1] for argv, _ in runner.calls if argv[:4] == ("nft", "-j", "list", "set")]
    assert read == ["cache_hits4_b", "cache_hits6_b"]
    cache.flush_frozen()
    flushed = runner.stdin_of("nft")[-1].splitlines()
    assert flushed[0] == "flush set inet portguard cache_hits4_b" and len(flushed) == 6
