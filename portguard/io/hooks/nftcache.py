"""The nftables backend's deny cache: two generations of sets, picked by a verdict map.

Each generation (``a``, ``b``) has a chain (``cache_a``) and, per IP family, a set of the keys
denied with reject (``cache_r4_a``), one of the keys denied with drop (``cache_d4_a``), and one
counting the SYNs the cache answered per key (``cache_hits4_a``, with ``counter``). The base
chains begin with ``meta l4proto vmap @cache_gen``: the map's one element (``tcp``) jumps to
the generation in force. Its chain adds the key of a deny the daemon repeated with
``MARK_CACHE`` (the verdict rules after the jump then reject or drop it) and answers a new SYN
whose key it holds with the cached verdict, counted in the hits set and the named counter
``deny_cache_answered``. The hits live in a set of their own because an ``add`` counts in its
element too: the keys' sets would count one more than the kernel answered.

A rotation (``NftCache``) switches the map to the other generation in one ``nft -f``
transaction, reads the frozen generation's hits (``nft -j list set``), then flushes its sets.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any, Final

from portguard.core.denycache import CacheKey
from portguard.core.marks import MARK_CACHE, MARK_DROP, MARK_MASK, MARK_REJECT, VERDICT_MASK
from portguard.io.hooks.backend import HookError, HookSpec
from portguard.io.hooks.runner import Runner, checked, run_command

TABLE: Final = "inet portguard"
GENERATIONS: Final = ("a", "b")
MAP: Final = "cache_gen"
COUNTER: Final = "deny_cache_answered"
SET_SIZE: Final = 65536  # keys one set holds at most; beyond, a deny is not cached
_FAMILIES: Final = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
_VERDICTS: Final = {MARK_REJECT: ("r", "reject with tcp reset"), MARK_DROP: ("d", "drop")}
_SYN_ONLY: Final = "tcp flags & (fin | syn | rst | ack) == syn"
_NFT_APPLY: Final = ("nft", "-f", "-")


def _hex(value: int) -> str:
    return f"{value:#010x}"


def chain_name(generation: str) -> str:
    return f"cache_{generation}"


def key_set(verdict: int, version: int, generation: str) -> str:
    return f"cache_{_VERDICTS[verdict][0]}{version}_{generation}"


def hits_set(version: int, generation: str) -> str:
    return f"cache_hits{version}_{generation}"


def _key(version: int) -> str:
    proto = _FAMILIES[version][0]
    return f"{proto} saddr . {proto} daddr . tcp dport"


def declarations(generation: str = "a") -> list[str]:
    """The cache's sets and the map (in force: ``generation``); its named counter is
    declared with the others (nftables.py)."""
    lines: list[str] = []
    for gen in GENERATIONS:
        for version, (_proto, addr) in _FAMILIES.items():
            kind = f"type {addr} . {addr} . inet_service"
            names = [(key_set(v, version, gen), SET_SIZE, "") for v in _VERDICTS]
            names.append((hits_set(version, gen), 2 * SET_SIZE, "\t\tcounter"))
            for name, size, counter in names:
                lines += [f"\tset {name} {{", f"\t\t{kind}", f"\t\tsize {size}",
                          "\t\tflags dynamic", *([counter] if counter else []), "\t}"]  # fmt: skip
    lines += [f"\tmap {MAP} {{", "\t\ttype inet_proto : verdict",
              f"\t\telements = {{ tcp : jump {chain_name(generation)} }}", "\t}"]  # fmt: skip
    return lines


def cache_rules(spec: HookSpec, generation: str) -> Iterator[str]:
    """The rules of one generation's chain: adding a cached deny's key, answering its SYNs."""
    ports = f"tcp dport {{ {', '.join(map(str, spec.sorted_ports))} }}"
    new = f"ct state new meta mark & {_hex(MARK_MASK)} == {_hex(0)}"
    for version in _FAMILIES:
        family = f"meta nfproto ipv{version}"
        for verdict in _VERDICTS:
            mark = f"meta mark & {_hex(VERDICT_MASK | MARK_CACHE)} == {_hex(verdict | MARK_CACHE)}"
            add = f"add @{key_set(verdict, version, generation)} {{ {_key(version)} }}"
            yield f"{family} {mark} {add}"
    for version in _FAMILIES:
        count = f"add @{hits_set(version, generation)} {{ {_key(version)} }}"
        for verdict, (_letter, answer) in _VERDICTS.items():
            held = f"{_key(version)} @{key_set(verdict, version, generation)}"
            yield (f"meta nfproto ipv{version} {_SYN_ONLY} {ports} {new} {held} {count} "
                   f'counter name "{COUNTER}" {answer}')  # fmt: skip


def chains(spec: HookSpec) -> list[str]:
    """The generations' chains, as lines of the table."""
    lines: list[str] = []
    for gen in GENERATIONS:
        lines += [f"\tchain {chain_name(gen)} {{", *(f"\t\t{r}" for r in cache_rules(spec, gen))]
        lines.append("\t}")
    return lines


JUMP_RULE: Final = f"meta l4proto vmap @{MAP}"  # the base chains' first rule


def in_force(listing: str) -> str:
    """The generation the map jumps to, from ``nft -j list map``."""
    for item in json.loads(listing).get("nftables", []):
        for _key_value, verdict in (item.get("map") or {}).get("elem", []):
            target = str(verdict.get("jump", {}).get("target", ""))
            if target in {chain_name(gen) for gen in GENERATIONS}:
                return target.removeprefix("cache_")
    raise HookError(f"map {MAP} jumps to no generation of the deny cache")


def parse_hits(listing: str) -> dict[CacheKey, int]:
    """Each key and its packets, from ``nft -j list set`` of a hits set."""
    hits: dict[CacheKey, int] = {}
    for item in json.loads(listing).get("nftables", []):
        for element in (item.get("set") or {}).get("elem", []):
            key, packets = _element(element)
            if key is not None:
                hits[key] = hits.get(key, 0) + packets
    return hits


def _element(element: Any) -> tuple[CacheKey | None, int]:
    inner = element.get("elem") if isinstance(element, dict) else None
    if not isinstance(inner, dict):
        return None, 0
    src, dst, dport = inner["val"]["concat"]
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    packets = int((inner.get("counter") or {}).get("packets", 0))
    return (source.version, int(source), int(destination), int(dport)), packets


class NftCache:
    """The rotation of the nftables deny cache (see the module docstring)."""

    def __init__(self, runner: Runner = run_command) -> None:
        self._run = runner

    def _in_force(self) -> str:
        return in_force(checked(self._run, ["nft", "-j", "list", "map", *TABLE.split(), MAP]))

    def _frozen(self) -> str:
        """The generation the map does not jump to: frozen since the last rotation."""
        return "b" if self._in_force() == "a" else "a"

    def rotate(self) -> None:
        jump = f"jump {chain_name(self._frozen())}"
        script = (f"delete element {TABLE} {MAP} {{ tcp }}\n"
                  f"add element {TABLE} {MAP} {{ tcp : {jump} }}\n")  # fmt: skip
        checked(self._run, _NFT_APPLY, script)  # one transaction: never without a generation

    def read_frozen(self) -> dict[CacheKey, int]:
        frozen, hits = self._frozen(), dict[CacheKey, int]()
        for version in _FAMILIES:
            argv = ["nft", "-j", "list", "set", *TABLE.split(), hits_set(version, frozen)]
            for key, count in parse_hits(checked(self._run, argv)).items():
                hits[key] = hits.get(key, 0) + count
        return hits

    def flush_frozen(self) -> None:
        frozen = self._frozen()
        names = [hits_set(v, frozen) for v in _FAMILIES]
        names += [key_set(verdict, v, frozen) for v in _FAMILIES for verdict in _VERDICTS]
        checked(self._run, _NFT_APPLY, "".join(f"flush set {TABLE} {n}\n" for n in names))
