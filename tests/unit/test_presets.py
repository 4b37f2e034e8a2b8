"""Every shipped preset: its cases (connection -> verdict) through the real loader and decide.

A preset directory without a cases.toml, or with an empty one, fails: each preset must say what
its rules do. Every rule of a preset must decide at least one case.
"""

from __future__ import annotations

import ipaddress
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from portguard.cli.main import main
from portguard.core.policy import Action, Connection, Direction, RuleSet
from portguard.io.policyfiles import load_ruleset
from portguard.shipped import PRESETS_DIR, RULES_DIR, preset_names

CASE_KEYS = {"note", "src", "dst", "dport", "direction", "action", "rule"}


@cache
def preset(name: str) -> RuleSet:
    return load_ruleset([PRESETS_DIR / name / "rules"])


def cases_of(name: str, presets: Path = PRESETS_DIR) -> list[dict[str, Any]]:
    path = presets / name / "cases.toml"
    assert path.is_file(), f"preset {name} has no cases.toml"
    cases = tomllib.loads(path.read_text(encoding="utf-8")).get("case", [])
    assert isinstance(cases, list) and cases, f"{path} holds no [[case]]"
    return cases


def all_cases() -> list[tuple[str, int, dict[str, Any]]]:
    found = []
    for name in preset_names():
        try:
            cases = cases_of(name)
        except AssertionError:  # reported by test_every_preset_has_cases
            continue
        found += [(name, number, case) for number, case in enumerate(cases, start=1)]
    return found


def connection(case: dict[str, Any]) -> Connection:
    src, dst = ipaddress.ip_address(case["src"]), ipaddress.ip_address(case["dst"])
    assert src.version == dst.version
    return Connection(src.version, int(src), int(dst), case["dport"], Direction(case["direction"]))


def test_the_three_presets_are_shipped() -> None:
    assert {"isp-residential", "campus", "host-output"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_has_cases(name: str) -> None:
    for case in cases_of(name):
        assert set(case) <= CASE_KEYS and CASE_KEYS - {"note"} <= set(case), case


def test_a_preset_without_cases_fails(tmp_path: Path) -> None:
    (tmp_path / "bare" / "rules").mkdir(parents=True)
    with pytest.raises(AssertionError, match=r"preset bare has no cases\.toml"):
        cases_of("bare", tmp_path)
    (tmp_path / "bare" / "cases.toml").write_text("# nothing yet\n")
    with pytest.raises(AssertionError, match=r"holds no \[\[case\]\]"):
        cases_of("bare", tmp_path)
    (tmp_path / "bare" / "cases.toml").write_text('[[case]]\nsrc = "192.0.2.1"\n')
    assert len(cases_of("bare", tmp_path)) == 1


@pytest.mark.parametrize(
    ("name", "number", "case"),
    all_cases(),
    ids=[f"{name}-{number}" for name, number, _ in all_cases()],
)
def test_preset_case(name: str, number: int, case: dict[str, Any]) -> None:
    ruleset = preset(name)
    conn = connection(case)
    decision = ruleset.decide(conn)
    assert (decision.action, decision.rule_id) == (Action(case["action"]), case["rule"]), case
    assert ruleset.explain(conn).decision == decision


@pytest.mark.parametrize("name", preset_names())
def test_every_rule_of_a_preset_decides_some_case(name: str) -> None:
    decided = {preset(name).decide(connection(case)).rule_id for case in cases_of(name)}
    assert {rule.id for rule in preset(name).rules} <= decided


@pytest.mark.parametrize("name", preset_names())
def test_preset_config_checks_clean_under_strict(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--strict", "--config", str(PRESETS_DIR / name / "portguard.toml")]) == 0
    assert "warning" not in capsys.readouterr().out


def test_isp_residential_is_the_shipped_default() -> None:
    """The preset and portguard/shipped/rules are the same files (kept identical by this test)."""
    shipped = sorted(p.relative_to(RULES_DIR) for p in RULES_DIR.rglob("*") if p.is_file())
    copy_dir = PRESETS_DIR / "isp-residential" / "rules"
    copy = sorted(p.relative_to(copy_dir) for p in copy_dir.rglob("*") if p.is_file())
    assert shipped == copy
    for relative in shipped:
        assert (RULES_DIR / relative).read_bytes() == (copy_dir / relative).read_bytes()
