"""Address parsing, list files (fast path and line parser), and hashed prefix sets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.core.policy import addresses
from portguard.core.policy.addresses import (
    MAX_LIST_ERRORS,
    AddressSet,
    Network,
    parse_address_list,
    parse_lines,
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


def test_address_list_skips_comments_and_reports_lines_and_columns() -> None:
    text = "# header\n\n203.0.113.0/24   # acme\n  2001:db8:b12::/48\nbogus\n  1.2.3.4 5.6.7.8\n"
    addresses, errors = parse_address_list(text)
    assert errors == [
        (5, 1, '"bogus" is not a valid IP address or CIDR'),
        (6, 3, '"1.2.3.4 5.6.7.8": write one address or CIDR a line'),
    ]
    assert addresses.contains(4, ip("203.0.113.9")) and addresses.contains(6, ip("2001:db8:b12::1"))
    assert addresses.size == 2


def test_address_list_fast_path() -> None:
    text = "192.0.2.1\n192.0.2.2 # two\n198.51.100.0/24\n2001:db8::/48\n2001:db8:1::1\n\n"
    addresses, errors = parse_address_list(text, "list")
    assert errors == []
    assert addresses.size == 5
    assert [len(networks) for _, networks in addresses.v4] == [2, 1]  # largest table first
    assert addresses.contains(4, ip("198.51.100.200")) and not addresses.contains(
        4, ip("192.0.2.3")
    )
    assert addresses.contains(6, ip("2001:db8:0:ffff::1")) and addresses.contains(
        6, ip("2001:db8:1::1")
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("10.0.0.1/8", '"10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)'),
        ("10.0.0.0/33", '"10.0.0.0/33": the prefix length must be a number from 0 to 32'),
        ("10.0.0.0/", '"10.0.0.0/": the prefix length must be a number from 0 to 32'),
        ("2001:db8::/129", '"2001:db8::/129": the prefix length must be a number from 0 to 128'),
        ("2001:db8::g", '"2001:db8::g" is not a valid IP address or CIDR'),
        ("192.0.2.1:25", '"192.0.2.1:25" is not a valid IP address or CIDR'),
        ("192.0.2.0/٢٤", "the prefix length must be a number from 0 to 32"),
    ],
)
def test_a_bad_line_among_good_ones_is_found_by_line(line: str, message: str) -> None:
    _, errors = parse_address_list(f"192.0.2.0/24\n{line}\n2001:db8::/32\n")
    assert len(errors) == 1
    assert errors[0][:2] == (2, 1) and message in errors[0][2]


entries = st.one_of(
    st.builds(
        lambda a, n: f"{ipaddress.IPv4Address(a)}/{n}",
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(lambda a: str(ipaddress.IPv4Address(a)), st.integers(0, 2**32 - 1)),
    st.builds(
        lambda a, n: f"{ipaddress.IPv6Address(a)}/{n}",
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
    st.sampled_from(["# note", "", "  ", "bogus", "1.2.3.4 # x", "::/0", "0.0.0.0/0", "10.0.0.0/"]),
)


@given(st.lists(entries, max_size=20), st.lists(st.integers(0, 2**32 - 1), max_size=10))
def test_fast_path_and_line_parser_agree(lines: list[str], probes: list[int]) -> None:
    text = "\n".join(lines)
    fast, fast_errors = parse_address_list(text)
    table, errors = parse_lines(text)
    assert fast_errors == errors
    if not errors:
        slow = table.freeze("list")
        assert fast.size == slow.size
        for probe in probes:
            assert fast.contains(4, probe) == slow.contains(4, probe)
            assert fast.contains(6, probe << 96) == slow.contains(6, probe << 96)


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


def test_union_merges_members_and_shares_a_single_one() -> None:
    a = AddressSet.from_networks("a", [parse_network("10.0.0.0/25")])
    b = AddressSet.from_networks("b", [parse_network("10.0.0.128/25"), parse_network("::1")])
    both = AddressSet.union("a or b", [a, b])
    assert both.label == "a or b"
    assert both.size == 3
    assert both.contains(4, ip("10.0.0.200")) and both.contains(6, 1)
    alone = AddressSet.union("just a", [a, AddressSet("nothing")])
    assert alone.label == "just a" and alone.v4 is a.v4  # not copied
    assert AddressSet.union("none", []).empty


def test_covers_block_by_block() -> None:
    wide = AddressSet.from_networks(
        "w", [parse_network("10.0.0.0/8"), parse_network("2001:db8::/32")]
    )
    narrow = AddressSet.from_networks(
        "n", [parse_network("10.1.0.0/16"), parse_network("10.2.3.4")]
    )
    assert wide.covers(narrow) and not narrow.covers(wide)
    assert wide.covers(AddressSet("empty"))
    assert not wide.covers(AddressSet.from_networks("x", [parse_network("11.0.0.0/16")]))
    assert not narrow.covers(AddressSet.from_networks("6", [parse_network("2001:db8::1")]))
    halves = AddressSet.from_networks(
        "h", [parse_network("10.0.0.0/9"), parse_network("10.128.0.0/9")]
    )
    assert not halves.covers(
        AddressSet.from_networks("8", [parse_network("10.0.0.0/8")])
    )  # by design


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


@given(st.lists(networks4, min_size=1, max_size=8), networks4)
def test_covers_agrees_with_ipaddress(
    networks: list[ipaddress.IPv4Network], other: ipaddress.IPv4Network
) -> None:
    mine = AddressSet.from_networks("m", [parse_network(str(n)) for n in networks])
    theirs = AddressSet.from_networks("t", [parse_network(str(other))])
    assert mine.covers(theirs) == any(other.subnet_of(n) for n in networks)


def test_block_wise_line_splitting_matches_splitlines() -> None:
    from portguard.core.policy import addresses

    text = "".join(f"192.0.2.{n % 256}/32\r\n" if n % 3 else f"# {n}\n" for n in range(5000))
    original = addresses.LINES_BLOCK
    addresses.LINES_BLOCK = 97  # many blocks, boundaries inside lines
    try:
        assert list(addresses._lines(text)) == text.splitlines()
        assert list(addresses._lines(text + "no newline")) == (text + "no newline").splitlines()
    finally:
        addresses.LINES_BLOCK = original


# --- hostile list files ----------------------------------------------------------------------


def test_a_huge_line_is_one_short_error() -> None:
    _, errors = parse_address_list("192.0.2.1\n" + "1" * 10_000_000 + "\n")
    assert errors == [
        (2, 1, "an entry of 10,000,000 characters: an address or CIDR has at most 43")
    ]


def test_control_characters_are_named_not_echoed() -> None:
    _, errors = parse_address_list("192.0.2\x00.1\n\x1b[2J\n")
    assert errors == [
        (1, 1, "holds the control character \\x00 (is this a binary file?)"),
        (2, 1, "holds the control character \\x1b (is this a binary file?)"),
    ]


def test_errors_of_one_list_file_stop_after_the_limit() -> None:
    _, errors = parse_address_list("bad\n" * 10_000)
    assert len(errors) == MAX_LIST_ERRORS + 1
    assert errors[-1] == (MAX_LIST_ERRORS, 1, f"stopped after {MAX_LIST_ERRORS} errors")


def test_a_list_beyond_the_entry_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(addresses, "MAX_LIST_ENTRIES", 3)
    ok = "# four lines, three entries\n192.0.2.1\n192.0.2.2\n192.0.2.3\n"
    assert parse_address_list(ok)[1] == []
    for text in (ok + "\n192.0.2.4\n", ok + "\nbad\n"):  # the fast and the line-by-line parser
        _, errors = parse_address_list(text)
        assert [(line, message.split(":")[0]) for line, _, message in errors] == [
            (6, "more than 3 entries")
        ]
    assert parse_lines(ok + "192.0.2.4\n")[1][0][:2] == (5, 1)
