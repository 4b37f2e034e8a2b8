"""The check report: exit codes, the JSON object, the text lines."""

from __future__ import annotations

from pathlib import Path

from portguard.core.errors import PolicyError, Problem
from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.report import EXIT_ERRORS, EXIT_OK, EXIT_WARNINGS, CheckReport

CONFIG = Path("/etc/portguard/portguard.toml")
RULES = (
    '[sets.relay]\nhosts = ["smtp.example.net"]\n'
    '[[rule]]\nid = "r"\ndst = "relay"\naction = "allow"\n'
)
WARNING = Problem(Path("/r/10-a.toml"), 3, "rule 'r' can never match", 1)


def loaded(warnings: list[Problem]) -> CheckReport:
    ruleset = compile_ruleset(
        [(Path("/r/10-a.toml"), RULES)], lambda p: "", resolve=lambda n: ["198.51.100.26"]
    )
    return CheckReport.loaded(CONFIG, ruleset, warnings)


def test_exit_codes() -> None:
    assert loaded([]).exit_code(strict=False) == EXIT_OK
    assert loaded([]).exit_code(strict=True) == EXIT_OK
    assert loaded([WARNING]).exit_code(strict=False) == EXIT_OK
    assert loaded([WARNING]).exit_code(strict=True) == EXIT_WARNINGS
    failed = CheckReport.failed(CONFIG, PolicyError([WARNING, "no rule paths given"]))
    assert failed.exit_code(strict=False) == EXIT_ERRORS


def test_json_of_a_valid_policy() -> None:
    report = loaded([WARNING])
    assert report.ruleset is not None
    assert report.as_json(strict=False) == {
        "ok": True,
        "config": "/etc/portguard/portguard.toml",
        "errors": [],
        "warnings": [
            {"path": "/r/10-a.toml", "line": 3, "col": 1, "message": "rule 'r' can never match"}
        ],
        "rules": 1,
        "disabled": [],
        "policy_version": report.ruleset.version,
        "sources": ["/r/10-a.toml"],
        "resolved": {"smtp.example.net": ["198.51.100.26"]},
    }
    assert report.as_json(strict=True)["ok"] is False


def test_json_of_errors() -> None:
    error = PolicyError([Problem(Path("/r/a.toml"), 2, "bad", 5), "no rule paths given"])
    assert CheckReport.failed(CONFIG, error).as_json(strict=False) == {
        "ok": False,
        "config": "/etc/portguard/portguard.toml",
        "errors": [
            {"path": "/r/a.toml", "line": 2, "col": 5, "message": "bad"},
            {"path": None, "line": None, "col": None, "message": "no rule paths given"},
        ],
        "warnings": [],
        "rules": 0,
        "disabled": [],
        "policy_version": None,
        "sources": [],
        "resolved": {},
    }


def test_text_lines() -> None:
    out, err = loaded([WARNING]).text()
    assert err == []
    assert out[0] == "/r/10-a.toml:3:1: warning: rule 'r' can never match"
    assert out[1] == "host smtp.example.net: 198.51.100.26"
    assert out[2].startswith("/etc/portguard/portguard.toml: ok; 1 rules from /r/10-a.toml;")
    assert out[2].endswith("; 1 warnings")
    out, err = CheckReport.failed(CONFIG, PolicyError([WARNING])).text()
    assert (out, err) == ([], ["/r/10-a.toml:3:1: rule 'r' can never match"])
