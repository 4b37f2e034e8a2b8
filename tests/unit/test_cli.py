"""The CLI as an operator runs it: check, explain and argument errors (no root needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portguard.cli import main
from portguard.shipped import CONFIG_PATH, RULES_DIR

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken"
LOCATED = re.compile(r"^(?P<path>/\S+?)(:(?P<line>\d+)(:\d+)?)?: \S.*$")


def config_for(tmp_path: Path, rules: Path) -> Path:
    config = tmp_path / "portguard.toml"
    config.write_text(f'[network]\nwan = ["eth0"]\n[rules]\npaths = ["{rules}"]\n')
    return config


def test_shipped_files_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(config_for(tmp_path, RULES_DIR))]) == 0
    out = capsys.readouterr().out
    assert "ok; 5 rules" in out and "10-isp.toml" in out


def test_the_shipped_config_passes_once_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # as `make install` lays it out: the config beside rules.d holding the shipped rules
    installed = CONFIG_PATH.read_text().replace("/etc/portguard/rules.d", str(RULES_DIR))
    assert installed != CONFIG_PATH.read_text()
    config = tmp_path / "portguard.toml"
    config.write_text(installed)
    assert main(["check", "--config", str(config)]) == 0, capsys.readouterr().err


RULE_CASES = sorted(p for p in (BROKEN / "rules").iterdir() if p.is_dir())
CONFIG_CASES = sorted((BROKEN / "config").glob("*.toml"))


def assert_located_errors(err: str, under: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "check printed no error"
    for line in lines:
        match = LOCATED.match(line)
        assert match, f"not path:line: message: {line!r}"
        assert match["line"] or Path(match["path"]).is_dir(), f"a file error needs a line: {line}"
        assert Path(match["path"]).resolve().is_relative_to(under.resolve()), line


@pytest.mark.parametrize("case", RULE_CASES, ids=[p.name for p in RULE_CASES])
def test_broken_rule_files_exit_1_with_located_errors(
    case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(config_for(tmp_path, case))]) == 1
    assert_located_errors(capsys.readouterr().err, case)


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[p.stem for p in CONFIG_CASES])
def test_broken_configs_exit_1_with_located_errors(
    case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(case)]) == 1
    assert_located_errors(capsys.readouterr().err, case.parent)


def test_at_least_twenty_broken_files() -> None:
    assert len(RULE_CASES) + len(CONFIG_CASES) >= 20


def test_explain_names_the_deciding_rule_and_why_earlier_ones_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_for(tmp_path, RULES_DIR))
    argv = ["explain", "--config", config, "--src", "100.64.10.10", "--dst", "198.51.100.25",
            "--dport", "25"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "block-25" in out and "reject" in out
    assert "smarthosts" in out  # why the smarthost rule did not match
    assert "submission" in out


def test_explain_refuses_mixed_families(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_for(tmp_path, RULES_DIR))
    argv = ["explain", "--config", config, "--src", "100.64.10.10", "--dst", "2001:db8::1",
            "--dport", "25"]  # fmt: skip
    assert main(argv) == 2


def test_missing_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.toml"
    assert main(["check", "--config", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--src", "not-an-ip", "--dst", "192.0.2.1", "--dport", "25"])
    assert exit_info.value.code == 2
