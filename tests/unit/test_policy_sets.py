"""Named sets: CIDRs, list files, host names and unions of other sets, across files."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest

from portguard.core.errors import PolicyError
from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.ruleset import RuleSet
from portguard.core.policy.sets import dependency_order

DNS = {"smtp.example.net": ["198.51.100.26", "2001:db8:25::26"], "mx.example.net": ["192.0.2.25"]}


def resolve(name: str) -> Sequence[str]:
    if name in DNS:
        return DNS[name]
    raise OSError(-2, "Name or service not known")


def compiled(*texts: str, lists: dict[str, str] | None = None) -> RuleSet:
    files = [(Path(f"/r/{i}0-x.toml"), text) for i, text in enumerate(texts, start=1)]
    found = {Path("/r") / name: body for name, body in (lists or {}).items()}
    return compile_ruleset(files, found.__getitem__, resolve=resolve)


def members(ruleset: RuleSet, address: str) -> bool:
    """Whether the first rule's src holds ``address``."""
    parsed = ipaddress.ip_address(address)
    src = ruleset.rules[0].src
    assert src is not None
    return src.contains(parsed.version, int(parsed))


RULE = '[[rule]]\nid = "r"\nsrc = "all"\naction = "allow"\n'


def test_a_union_holds_its_members_own_and_nested_across_files() -> None:
    sets = (
        '[sets.all]\ncidrs = ["10.0.0.0/8"]\nsets = ["customers", "relays"]\n'
        '[sets.customers]\nsets = ["business"]\n'
        '[sets.business]\nfiles = ["business.txt"]\n'
    )
    more = '[sets.relays]\nhosts = ["smtp.example.net"]\n'
    ruleset = compiled(sets, more + RULE, lists={"business.txt": "203.0.113.0/24\n"})
    for address in ("10.1.2.3", "203.0.113.9", "198.51.100.26", "2001:db8:25::26"):
        assert members(ruleset, address), address
    assert not members(ruleset, "198.51.100.27")
    src = ruleset.rules[0].src
    assert src is not None and src.label == "set 'all'"


def test_a_set_of_one_list_file_shares_its_addresses() -> None:
    ruleset = compiled(
        '[sets.all]\nfiles = ["big.txt"]\n' + RULE, lists={"big.txt": "192.0.2.0/24\n"}
    )
    src = ruleset.rules[0].src
    assert src is not None
    assert src.v4 is ruleset.lists[Path("/r/big.txt")].addresses.v4


def test_resolved_host_names_are_kept_and_shown() -> None:
    ruleset = compiled('[sets.all]\nhosts = ["smtp.example.net", "mx.example.net"]\n' + RULE)
    assert ruleset.resolved == {
        "smtp.example.net": ("198.51.100.26", "2001:db8:25::26"),
        "mx.example.net": ("192.0.2.25",),
    }
    assert ruleset.has_hosts
    assert not compiled('[sets.all]\ncidrs = ["192.0.2.0/24"]\n' + RULE).has_hosts


def test_a_name_that_resolves_to_nothing_usable_is_an_error() -> None:
    DNS["odd.example.net"] = ["not-an-address"]
    try:
        with pytest.raises(PolicyError) as caught:
            compiled('[sets.all]\nhosts = ["odd.example.net"]\n' + RULE)
    finally:
        del DNS["odd.example.net"]
    assert caught.value.messages == [
        '/r/10-x.toml:2:10: hosts: "odd.example.net" does not resolve (resolves to no IP address)'
    ]


def test_every_error_of_sets_at_once() -> None:
    text = (
        '[sets.a]\nsets = ["b", "nope"]\n[sets.b]\nsets = ["a"]\n'
        '[sets.c]\nhosts = ["gone.example.net", "1.2.3.4"]\n'
    )
    with pytest.raises(PolicyError) as caught:
        compiled(text)
    assert caught.value.messages == [
        "/r/10-x.toml:2:14: sets: unknown set 'nope'",
        "/r/10-x.toml:4:9: sets: cycle between sets: a -> b -> a (also at /r/10-x.toml:2)",
        '/r/10-x.toml:6:10: hosts: "gone.example.net" does not resolve (Name or service not known)',
        "/r/10-x.toml:6:30: hosts: \"1.2.3.4\" is an address: write addresses in 'cidrs'",
    ]


def test_dependency_order_puts_members_first_without_recursion() -> None:
    members = {f"s{i}": [f"s{i + 1}"] for i in range(10_000)} | {"s10000": []}
    order = dependency_order(members)
    assert order[0] == "s10000" and order[-1] == "s0" and len(order) == 10_001
    assert dependency_order({"a": ["b", "c"], "b": ["c"], "c": []}) == ["c", "b", "a"]


def test_dependency_order_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="includes itself"):
        dependency_order({"a": ["b"], "b": ["a"]})
