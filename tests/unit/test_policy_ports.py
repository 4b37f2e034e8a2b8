"""dport entries and port sets."""

from __future__ import annotations

import pytest

from portguard.core.policy.ports import PortSet, format_ports, parse_port_entry


@pytest.mark.parametrize(
    ("value", "expected"),
    [(25, (25, 25)), ("1000-2000", (1000, 2000)), (" 5 - 5 ", (5, 5)), ("1-65535", (1, 65535))],
)
def test_parse_port_entry(value: object, expected: tuple[int, int]) -> None:
    assert parse_port_entry(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "port 0 is out of range 1-65535"),
        (65536, "port 65536 is out of range 1-65535"),
        ("0-10", "port 0 is out of range"),
        ("20-10", '"20-10": the range starts above its end (20 > 10)'),
        ("25", '"25" is a string: write a single port as an integer'),
        ("smtp", '"smtp" is not a port range "from-to"'),
        ("1-٣", "is not a port range"),
        (True, 'true is a boolean, not a port or a "from-to" range'),
        (2.5, "2.5 is a float, not a port"),
    ],
)
def test_parse_port_entry_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_port_entry(value)
    assert message in str(caught.value)


def test_port_set_members_and_wide_ranges() -> None:
    ports = PortSet.from_ranges([(587, 587), (465, 465), (2000, 2010), (10000, 60000)])
    assert ports.label == "587, 465, 2000-2010, 10000-60000"
    assert not ports.single
    assert ports.ranges == ((10000, 60000),)
    for port in (465, 587, 2000, 2010, 10000, 60000):
        assert ports.contains(port)
    for port in (25, 1999, 2011, 9999, 60001):
        assert not ports.contains(port)


def test_single_port() -> None:
    ports = PortSet.from_ranges([(25, 25)])
    assert ports.single and ports.label == "25"


def test_format_ports() -> None:
    assert format_ports([(25, 25), (1, 9)]) == "25, 1-9"
