"""Warnings: shadowed rules (naming the rule that shadows), unhooked ports, empty sets."""

from __future__ import annotations

from pathlib import Path

from portguard.core.errors import Problem
from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.lint import covers, lint
from portguard.core.policy.ruleset import RuleSet
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import PRESETS_DIR, RULES_DIR, preset_names

HOOKED = (25, 465, 587)
PATH = Path("/r/10-a.toml")


def compiled(text: str, lists: dict[str, str] | None = None) -> RuleSet:
    files = {PATH.parent / name: body for name, body in (lists or {}).items()}
    return compile_ruleset([(PATH, text)], files.__getitem__)


def messages(ruleset: RuleSet, hooked: tuple[int, ...] = HOOKED) -> list[str]:
    return [p.format() for p in lint(ruleset, hooked)]


SETS = """
[sets.subscribers]
cidrs = ["100.64.0.0/10", "2001:db8:64::/48"]

[sets.some]
cidrs = ["100.64.1.0/24", "2001:db8:64:1::/64"]
"""


def test_a_rule_covered_by_an_earlier_one_is_shadowed() -> None:
    text = SETS + (
        '\n[[rule]]\nid = "block"\nsrc = "subscribers"\ndport = 25\naction = "reject"\n'
        '\n[[rule]]\nid = "allow-some"\nsrc = "some"\ndport = 25\ndirection = "outbound"\n'
        'action = "allow"\n'
    )
    assert messages(compiled(text)) == [
        "/r/10-a.toml:14:1: rule 'allow-some' can never match: rule 'block' (/r/10-a.toml:8)"
        " comes first and matches every connection it would"
    ]


def test_narrower_earlier_rules_do_not_shadow() -> None:
    text = SETS + (
        '\n[[rule]]\nid = "some"\nsrc = "some"\ndport = 25\naction = "allow"\n'
        '\n[[rule]]\nid = "out"\nsrc = "subscribers"\ndport = 25\ndirection = "outbound"\n'
        'action = "reject"\n'
        '\n[[rule]]\nid = "all"\nsrc = "subscribers"\ndport = [25, 587]\naction = "reject"\n'
        '\n[[rule]]\nid = "v6"\nsrc = "2001:db8:64::1"\ndst = "2001:db8::1"\naction = "log"\n'
    )
    assert messages(compiled(text)) == []


def test_direction_ports_and_dst_all_count() -> None:
    text = (
        '[[rule]]\nid = "any-25"\ndport = 25\naction = "drop"\n'
        '\n[[rule]]\nid = "in-25"\ndport = 25\ndirection = "inbound"\ndst = "192.0.2.0/24"\n'
        'action = "allow"\n'
        '\n[[rule]]\nid = "sub"\ndport = [465, 587]\naction = "allow"\n'
        '\n[[rule]]\nid = "sub-out"\ndport = 587\ndirection = "outbound"\naction = "allow"\n'
    )
    warned = [m.split("rule '")[1].split("'")[0] for m in messages(compiled(text))]
    assert warned == ["in-25", "sub-out"]


def test_a_limited_rule_shadows_too() -> None:
    """Past its limit a rule still decides (its exceed action): later rules never see it."""
    text = (
        '[[rule]]\nid = "limited"\ndport = 25\naction = "allow"\nlimit = { rate = "1/second" }\n'
        '\n[[rule]]\nid = "later"\ndport = 25\naction = "reject"\n'
    )
    assert "rule 'later' can never match: rule 'limited'" in messages(compiled(text))[0]


def test_unhooked_port_and_empty_set_warnings() -> None:
    text = (
        '[sets.nobody]\nfiles = ["empty.txt"]\n'
        '\n[[rule]]\nid = "web"\ndport = 80\naction = "allow"\n'
        '\n[[rule]]\nid = "ghost"\nsrc = "nobody"\naction = "allow"\n'
    )
    assert messages(compiled(text, {"empty.txt": "# nobody yet\n"})) == [
        "/r/10-a.toml:4:1: rule 'web' names no hooked port (25, 465, 587): it can never match",
        "/r/10-a.toml:9:1: rule 'ghost' can never match: its src (set 'nobody') holds no address",
    ]


def test_the_hooked_ports_decide_what_covers_means() -> None:
    text = (
        '[[rule]]\nid = "smtp"\ndport = [25, 465, 587]\naction = "reject"\n'
        '\n[[rule]]\nid = "anything"\naction = "allow"\n'
    )
    ruleset = compiled(text)
    assert "rule 'anything' can never match" in messages(ruleset)[0]
    assert messages(ruleset, (25, 465, 587, 2525)) == []
    assert covers(ruleset.rules[0], ruleset.rules[1], [25]) is True
    assert covers(ruleset.rules[0], ruleset.rules[1], [2525]) is False


def test_load_warnings_come_first_and_the_shipped_policies_are_clean() -> None:
    ruleset = compiled('[[rule]]\nid = "a"\naction = "allow"\n')
    kept = Problem(PATH, 3, 'hosts: "x" did not resolve', 10)
    with_warning = RuleSet(
        ruleset.rules, ruleset.default, "v", ruleset.sources, warnings=[kept], texts=ruleset.texts
    )
    assert lint(with_warning, HOOKED) == [kept]
    assert lint(load_ruleset([RULES_DIR]), HOOKED) == []
    for name in preset_names():
        assert lint(load_ruleset([PRESETS_DIR / name / "rules"]), HOOKED) == [], name
