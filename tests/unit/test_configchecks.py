"""Checks across config values on the raw data, and the address forms the config takes."""

from __future__ import annotations

import pytest

from portguard.config.checks import checks, listen_address_problem


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:9477", None),
        ("[::1]:9477", None),
        ("localhost:9477", "is not an IP address"),
        ("[127.0.0.1]:9477", "brackets are for IPv6"),
        ("127.0.0.1:0", "out of range"),
        ("127.0.0.1", "is not of the form"),
    ],
)
def test_listen_addresses(address: str, problem: str | None) -> None:
    found = listen_address_problem(address)
    assert found is None if problem is None else problem in (found or "")


def test_checks_name_the_key_of_each_problem() -> None:
    data = {
        "queue": {"num": 65535, "workers": 2, "fail_mode": "open"},
        "hook": {"keep_on_stop": True, "ports": [25, 25]},
        "network": {"wan": []},
        "log": {"outputs": [{"type": "file"}]},
    }
    found = dict(checks(data))
    assert set(found) == {
        ("queue", "workers"),
        ("hook", "keep_on_stop"),
        ("hook", "ports", 1),
        ("network", "wan"),
        ("log", "outputs", 0),
    }
    assert found[("network", "wan")] == "wan: needs at least one entry"
