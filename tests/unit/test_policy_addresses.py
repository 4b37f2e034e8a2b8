"""Address parsing, list files, and interval sets with bisect lookup."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.policy.addresses import (
    AddressSet,
    Network,
    merge_intervals,
    parse_address_list,
    parse_network,
)


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("198.51.100.26", Network(4, ip("198.51.100.26"), 32)),
        ("100.64.0.0/10", Network(4, ip("100.64.0.0"), 10)),
        ("0.0.0.0/0", Network(4, 0, 0)),
        ("2001:db8:64::/48", Network(6, ip("2001:db8:64::"), 48)),
        ("2001:db8:25::26", Network(6, ip("2001:db8:25::26"), 128)),
    ],
)
def test_parse_network(text: str, network: Network) -> None:
    assert parse_network(text) == network
    assert str(network) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/8", '"10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)'),
        ("2001:db8::1/32", '"2001:db8::1/32" has host bits set (the network is 2001:db8::/32)'),
        ("10.0.0.0/33", '"10.0.0.0/33": the prefix length must be a number from 0 to 32'),
        ("2001:db8::/129", "the prefix length must be a number from 0 to 128"),
        ("10.0.0.0/x", "the prefix length must be a number from 0 to 32"),
        ("300.1.2.3", '"300.1.2.3" is not a valid IP address or CIDR'),
        ("010.1.2.3", "is not a valid IP address or CIDR"),
        ("1.2.3", "is not a valid IP address or CIDR"),
        (" 1.2.3.4", "is not a valid IP address or CIDR"),
        ("fe80::1%eth0", "is not a valid IP address or CIDR"),
        ("", "is not a valid IP address or CIDR"),
    ],
)
def test_parse_network_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_network(text)
    assert message in str(caught.value)


def test_address_list_skips_comments_and_reports_lines() -> None:
    text = "# header\n\n203.0.113.0/24   # acme\n  2001:db8:b12::/48\nbogus\n1.2.3.4 5.6.7.8\n"
    networks, errors = parse_address_list(text)
    assert [str(n) for n in networks] == ["203.0.113.0/24", "2001:db8:b12::/48"]
    assert errors == [
        (5, '"bogus" is not a valid IP address or CIDR'),
        (6, '"1.2.3.4 5.6.7.8": write one address or CIDR a line'),
    ]


def test_merge_intervals_joins_overlapping_and_adjacent() -> None:
    assert merge_intervals([(10, 20), (0, 5), (6, 8), (15, 30), (40, 40)]) == [
        (0, 8),
        (10, 30),
        (40, 40),
    ]


def test_address_set_lookup_by_version() -> None:
    addresses = AddressSet.from_networks(
        "set 's'", [parse_network("100.64.0.0/10"), parse_network("2001:db8:64::/48")]
    )
    assert addresses.contains(4, ip("100.64.0.0"))
    assert addresses.contains(4, ip("100.127.255.255"))
    assert not addresses.contains(4, ip("100.128.0.0"))
    assert not addresses.contains(4, ip("100.63.255.255"))
    assert addresses.contains(6, ip("2001:db8:64:ffff::1"))
    assert not addresses.contains(6, ip("2001:db8:65::1"))
    # the same integer in the other family is not in the set
    assert not addresses.contains(6, ip("100.64.0.1"))


def test_union_merges_members() -> None:
    a = AddressSet.from_networks("a", [parse_network("10.0.0.0/25")])
    b = AddressSet.from_networks("b", [parse_network("10.0.0.128/25"), parse_network("::1")])
    both = AddressSet.union("a or b", [a, b])
    assert both.label == "a or b"
    assert both.interval_count == 2  # 10.0.0.0/24 and ::1
    assert both.contains(4, ip("10.0.0.200")) and both.contains(6, 1)


networks4 = st.builds(
    lambda address, length: ipaddress.ip_network((address, length), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)


@given(st.lists(networks4, max_size=30), st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_lookup_agrees_with_ipaddress(
    networks: list[ipaddress.IPv4Network], probes: list[int]
) -> None:
    addresses = AddressSet.from_networks("s", [parse_network(str(n)) for n in networks])
    for network in networks:
        probes += [int(network.network_address), int(network.broadcast_address)]
    for probe in probes:
        expected = any(ipaddress.IPv4Address(probe) in n for n in networks)
        assert addresses.contains(4, probe) == expected
