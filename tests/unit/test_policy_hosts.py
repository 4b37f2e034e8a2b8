"""Host names in sets: what counts as one, and the system resolver's answers."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from portguard.core.policy.hosts import host_name_problem, resolve_problem
from portguard.io.dns import resolve_host


@pytest.mark.parametrize(
    "name", ["smtp.example.net", "mx1", "a-b.example.", "xn--bcher-kva.example"]
)
def test_host_names(name: str) -> None:
    assert host_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("198.51.100.26", "\"198.51.100.26\" is an address: write addresses in 'cidrs'"),
        ("2001:db8::25", "is an address"),
        ("smtp_relay.example.net", '"smtp_relay.example.net" is not a host name'),
        ("-mx.example.net", "is not a host name"),
        ("mx..example.net", "is not a host name"),
        ("1.2.3", "is not a host name"),
        ("a" * 64 + ".example", "is not a host name"),
        ("", "is not a host name"),
    ],
)
def test_not_host_names(name: str, problem: str) -> None:
    found = host_name_problem(name)
    assert found is not None and problem in found


def test_resolve_host_asks_for_both_families_and_deduplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []

    def getaddrinfo(*args: Any) -> list[tuple[Any, ...]]:
        calls.append(args)
        stream = socket.SOCK_STREAM
        return [
            (socket.AF_INET6, stream, 6, "", ("2001:db8:25::26", 0, 0, 0)),
            (socket.AF_INET, stream, 6, "", ("198.51.100.26", 0)),
            (socket.AF_INET, stream, 6, "", ("198.51.100.26", 0)),
            (socket.AF_INET6, stream, 6, "", ("fe80::1%eth0", 0, 0, 2)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert resolve_host("smtp.example.net") == ("2001:db8:25::26", "198.51.100.26", "fe80::1")
    assert calls == [("smtp.example.net", None, socket.AF_UNSPEC, socket.SOCK_STREAM)]


def test_resolve_problem_words() -> None:
    assert resolve_problem(socket.gaierror(-2, "Name or service not known")) == (
        "Name or service not known"
    )
    assert resolve_problem(OSError("timed out")) == "timed out"
    assert resolve_problem(OSError()) == "OSError"


def test_nxdomain_is_definite_timeouts_are_transient(tmp_path: Any) -> None:
    from pathlib import Path

    from portguard.core.errors import SourceError
    from portguard.io.dns import is_transient
    from portguard.io.policyfiles import load_ruleset

    assert not is_transient(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert is_transient(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    assert is_transient(TimeoutError("timed out"))
    rules = Path(tmp_path) / "r.toml"
    rules.write_text('[sets.relays]\nhosts = ["relay.example"]\n'
                     '[[rule]]\nid = "r"\ndst = "relays"\naction = "allow"\n')  # fmt: skip
    first = load_ruleset([rules], resolve=lambda name: ["192.0.2.1"])

    def outage(name: str) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    kept = load_ruleset([rules], resolve=outage, previous=first)
    assert kept.resolved == {"relay.example": ("192.0.2.1",)} and kept.warnings

    def gone(name: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(SourceError, match="does not resolve"):
        load_ruleset([rules], resolve=gone, previous=first)
