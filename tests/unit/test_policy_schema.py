"""The rule-file shape: references, lists of one, the reserved id, rates and limits."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from portguard.core.policy.addresses import parse_network
from portguard.core.policy.schema import (
    Rate,
    RuleSpec,
    SetRef,
    looks_like_address,
    parse_address_ref,
    parse_rate,
)


@pytest.mark.parametrize(
    ("text", "is_address"),
    [
        ("10.0.0.0/8", True),
        ("2001:db8::1", True),
        ("fe80::", True),
        ("/8", True),
        ("subscribers", False),
        ("_x", False),
        ("", False),
    ],
)
def test_looks_like_address(text: str, is_address: bool) -> None:
    assert looks_like_address(text) == is_address


def test_address_ref_is_a_network_or_a_set() -> None:
    assert parse_address_ref("198.51.100.26") == parse_network("198.51.100.26")
    assert parse_address_ref("smart_hosts-2") == SetRef("smart_hosts-2")
    with pytest.raises(ValueError, match="is not a set name, an address or a CIDR"):
        parse_address_ref("mail.example.com")
    with pytest.raises(ValueError, match="5 is an integer"):
        parse_address_ref(5)


def test_single_values_stand_for_lists_of_one() -> None:
    rule = RuleSpec.model_validate({"id": "a", "src": "s", "dport": 25, "action": "drop"})
    assert rule.src == [SetRef("s")]
    assert rule.dport == [(25, 25)]
    assert rule.direction == "any" and rule.enabled is True and rule.description == ""


def test_reserved_and_malformed_ids() -> None:
    for bad in ("default", "a b", "", "é"):
        with pytest.raises(ValidationError):
            RuleSpec.model_validate({"id": bad, "action": "allow"})
    assert RuleSpec.model_validate({"id": "A-b_c.9", "action": "allow"}).id == "A-b_c.9"


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("30/minute", Rate(30, 60, "30/minute")),
        (" 5 / second ", Rate(5, 1, "5/second")),
        ("100/hour", Rate(100, 3600, "100/hour")),
    ],
)
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert rate.per_second == rate.number / rate.seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30/fortnight", 'is not a rate "N/second", "N/minute" or "N/hour"'),
        ("30/minutes", "is not a rate"),
        ("30", "is not a rate"),
        ("-1/second", "is not a rate"),
        ("0/second", '"0/second": the count must be from 1 to 1000000'),
        ("1000001/hour", "the count must be from 1 to 1000000"),
        (30, '30 is an integer, not a rate "N/second"'),
    ],
)
def test_bad_rates(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rate(value)


def test_limit_and_log_keys() -> None:
    rule = RuleSpec.model_validate(
        {"id": "a", "action": "allow", "log": False, "limit": {"rate": "5/minute"}}
    )
    assert rule.log is False
    assert rule.limit is not None
    assert (rule.limit.burst, rule.limit.per, rule.limit.exceed) == (None, "src", "reject")
    assert RuleSpec.model_validate({"id": "a", "action": "allow"}).limit is None


def test_limit_max_buckets_and_prefix6_per_src() -> None:
    limit = {"rate": "5/minute", "prefix6": 56, "max_buckets": 1000}
    rule = RuleSpec.model_validate({"id": "a", "action": "allow", "limit": limit})
    assert rule.limit is not None and (rule.limit.prefix6, rule.limit.max_buckets) == (56, 1000)
    assert rule.limit.model_fields_set >= {"prefix6", "max_buckets"}
    for bad in (0, 16_777_217, "10", 1.5):
        with pytest.raises(ValidationError, match="max_buckets"):
            RuleSpec.model_validate(
                {"id": "a", "action": "allow", "limit": {"rate": "5/minute", "max_buckets": bad}}
            )
