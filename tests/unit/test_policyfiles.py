"""Loading rule files from disk: every broken fixture fails with its exact located message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portguard.core.errors import PolicyError
from portguard.core.policy import compiler
from portguard.io import policyfiles as loader
from portguard.io.policyfiles import load_ruleset, rule_files

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken" / "rules"

# case directory -> (file in the case, "line:column" or None, message); {case} is the case path
CASES: dict[str, tuple[str, str | None, str]] = {
    "bad-action": (
        "10-a.toml",
        "3:1",
        "action: must be 'allow', 'drop', 'reject' or 'log', not \"deny\"",
    ),
    "bad-address-in-src-list": (
        "10-a.toml",
        "6:23",
        'src: "300.1.2.3" is not a valid IP address or CIDR',
    ),
    "bad-cidr-in-list-file": (
        "lists/business.txt",
        "4:1",
        '"198.51.100.0/33": the prefix length must be a number from 0 to 32',
    ),
    "bad-cidr-in-set": (
        "10-a.toml",
        "5:3",
        'cidrs: "10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)',
    ),
    "bad-direction": (
        "10-a.toml",
        "3:1",
        "direction: must be 'outbound', 'inbound', 'internal', 'external' or 'any', not \"egress\"",
    ),
    "bad-rule-id": (
        "10-a.toml",
        "2:1",
        'id: "block 25" may hold only letters, digits, "_", "." and "-"',
    ),
    "bad-set-name": (
        "10-a.toml",
        "1:1",
        'set name "1st-customers" must start with a letter or "_"'
        ' and hold only letters, digits, "_" and "-"',
    ),
    "cidrs-not-array": ("10-a.toml", "2:1", "cidrs: must be an array, not a string"),
    "default-bad-action": (
        "10-a.toml",
        "2:1",
        "action: must be 'allow', 'drop', 'reject' or 'log', not \"deny\"",
    ),
    "default-twice": ("20-b.toml", "5:1", "[default] is already set at {case}/10-a.toml:1"),
    "description-integer": ("10-a.toml", "4:1", "description: must be a string, not an integer"),
    "direction-in-wrong-case": (
        "10-a.toml",
        "3:1",
        "direction: must be 'outbound', 'inbound', 'internal', 'external' or 'any',"
        ' not "Outbound"',
    ),
    "disabled-rule-with-error": ("10-a.toml", "5:1", "src: unknown set 'formercustomers'"),
    "dns-name-in-dst": (
        "10-a.toml",
        "3:1",
        'dst: "mail.example.com" is not a set name, an address or a CIDR',
    ),
    "dport-bad-range-format": ("10-a.toml", "3:14", 'dport: "1024-" is not a port range "from-to"'),
    "dport-empty-list": (
        "10-a.toml",
        "3:1",
        "dport: must not be an empty list (leave the key out to match any)",
    ),
    "dport-float": ("10-a.toml", "4:1", 'dport: 25.0 is a float, not a port or a "from-to" range'),
    "duplicate-id-same-file": (
        "10-a.toml",
        "7:1",
        "duplicate rule id 'submission' (first defined at {case}/10-a.toml:2)",
    ),
    "duplicate-id-two-files": (
        "20-b.toml",
        "7:1",
        "duplicate rule id 'block-25' (first defined at {case}/10-a.toml:3)",
    ),
    "duplicate-set-two-files": (
        "20-b.toml",
        "2:1",
        "set 'subscribers' is already defined at {case}/10-a.toml:1",
    ),
    "empty-set": (
        "10-a.toml",
        "2:1",
        "set 'nobody' is empty: give it 'cidrs', 'files', 'hosts' or 'sets'",
    ),
    "empty-src-list": (
        "10-a.toml",
        "3:1",
        "src: must not be an empty list (leave the key out to match any)",
    ),
    "enabled-string": ("10-a.toml", "5:1", "enabled: must be true or false, not a string"),
    "error-in-one-of-many-files": (
        "30-more.toml",
        "3:1",
        "direction: must be 'outbound', 'inbound', 'internal', 'external' or 'any', not \"in\"",
    ),
    "files-empty-string": ("10-a.toml", "2:10", "files: must not be empty"),
    "hosts-address": (
        "10-a.toml",
        "2:30",
        "hosts: \"198.51.100.26\" is an address: write addresses in 'cidrs'",
    ),
    "hosts-bad-name": ("10-a.toml", "2:10", 'hosts: "smtp_relay.example.net" is not a host name'),
    "hosts-integer": ("10-a.toml", "2:10", "hosts: entry must be a string, not an integer"),
    "hosts-unresolvable": (
        "10-a.toml",
        "5:3",
        'hosts: "nothere.example.net" does not resolve (Name or service not known)',
    ),
    "id-integer": ("10-a.toml", "2:1", "id: must be a string, not an integer"),
    "limit-bad-exceed": (
        "10-a.toml",
        "4:30",
        "exceed: must be 'reject', 'drop' or 'log', not \"allow\"",
    ),
    "limit-bad-per": ("10-a.toml", "4:30", "per: must be 'src', 'prefix' or 'rule', not \"dst\""),
    "limit-bad-rate-unit": (
        "10-a.toml",
        "5:11",
        'rate: "30/fortnight" is not a rate "N/second", "N/minute" or "N/hour"',
    ),
    "limit-burst-float": ("10-a.toml", "4:30", "burst: must be an integer, not a float"),
    "limit-burst-zero": ("10-a.toml", "4:30", "burst: 0 is out of range 1-1000000"),
    "limit-missing-rate": ("10-a.toml", "5:1", "missing required key 'rate'"),
    "limit-not-a-table": ("10-a.toml", "4:1", "limit: must be a table, not a string"),
    "limit-on-reject-rule": (
        "10-a.toml",
        "6:1",
        'limit: only a rule that allows (action "allow" or "log") can have a limit,'
        ' not action "reject"',
    ),
    "limit-prefix-without-per-prefix": (
        "10-a.toml",
        "4:44",
        'prefix6: applies only with per = "src" or "prefix"',
    ),
    "limit-prefix4-too-long": ("10-a.toml", "4:46", "prefix4: 33 is out of range 0-32"),
    "limit-max-buckets-zero": ("10-a.toml", "4:43", "max_buckets: 0 is out of range 1-16777216"),
    "limit-rate-integer": (
        "10-a.toml",
        "6:1",
        'rate: 30 is an integer, not a rate "N/second", "N/minute" or "N/hour"',
    ),
    "limit-rate-zero": (
        "10-a.toml",
        "5:11",
        'rate: "0/minute": the count must be from 1 to 1000000',
    ),
    "limit-unknown-key": ("10-a.toml", "4:30", "unknown key 'burts' (did you mean 'burst'?)"),
    "list-file-address-with-port": (
        "business.txt",
        "3:1",
        '"192.0.2.1:25" is not a valid IP address or CIDR',
    ),
    "list-file-bad-ipv6": (
        "business.txt",
        "4:1",
        '"2001:db8::g/48" is not a valid IP address or CIDR',
    ),
    "list-file-error-in-second-file": (
        "lists/b.txt",
        "3:1",
        '"100.64.0.0/100": the prefix length must be a number from 0 to 32',
    ),
    "list-file-ipv6-host-bits": (
        "business.txt",
        "2:4",
        '"2001:db8:b13::1/64" has host bits set (the network is 2001:db8:b13::/64)',
    ),
    "list-file-is-directory": (
        "10-a.toml",
        "2:10",
        'files: list file "lists" is a directory, not a list file',
    ),
    "list-file-netmask": (
        "business.txt",
        "1:1",
        '"192.0.2.0/255.255.255.0": the prefix length must be a number from 0 to 32',
    ),
    "list-file-not-utf8": ("business.txt", "1:16", "not UTF-8 text (byte 0xff)"),
    "log-false-on-log-action": (
        "10-a.toml",
        "6:1",
        'log: a rule with action "log" is always logged (use action "allow")',
    ),
    "log-string": ("10-a.toml", "5:1", "log: must be true or false, not a string"),
    "missing-action": ("10-a.toml", "1:1", "missing required key 'action'"),
    "missing-id": ("10-a.toml", "1:1", "missing required key 'id'"),
    "missing-list-file": (
        "10-a.toml",
        "4:10",
        'files: list file "lists/nothere.txt" not found (looked for {case}/lists/nothere.txt)',
    ),
    "no-rule-files": ("", None, "no rule files (*.toml) in this directory"),
    "port-as-string": (
        "10-a.toml",
        "3:1",
        'dport: "25" is a string: write a single port as an integer',
    ),
    "port-range-reversed": (
        "10-a.toml",
        "3:14",
        'dport: "2000-1000": the range starts above its end (2000 > 1000)',
    ),
    "port-range-too-high": ("10-a.toml", "3:10", "dport: port 70000 is out of range 1-65535"),
    "port-zero": ("10-a.toml", "3:10", "dport: port 0 is out of range 1-65535"),
    "reserved-rule-id": ("10-a.toml", "2:1", 'id: "default" is reserved for the default action'),
    "rule-as-table": (
        "10-a.toml",
        "1:1",
        "rule: must be an array of tables (write [[rule]]), not a table",
    ),
    "set-cycle-across-files": (
        "20-b.toml",
        "6:9",
        "sets: cycle between sets: all -> staff -> lab -> all"
        " (also at {case}/10-a.toml:2, {case}/20-b.toml:3)",
    ),
    "set-cycle-two": (
        "10-a.toml",
        "7:9",
        "sets: cycle between sets: a -> b -> a (also at {case}/10-a.toml:4)",
    ),
    "set-includes-itself": ("10-a.toml", "3:9", "sets: set 'relays' includes itself"),
    "set-not-a-table": ("10-a.toml", "1:1", "sets: must be a table, not an array"),
    "set-union-bad-name": ("10-a.toml", "2:9", 'sets: "1st-floor" is not a set name'),
    "set-union-not-array": ("10-a.toml", "5:1", "sets: must be an array, not a string"),
    "set-union-unknown": (
        "10-a.toml",
        "2:21",
        "sets: unknown set 'residental' (did you mean 'residential'?)",
    ),
    "src-integer": (
        "10-a.toml",
        "3:1",
        "src: 42 is an integer, not a set name, an address or a CIDR",
    ),
    "toml-duplicate-key": ("10-a.toml", "5:18", "TOML syntax error: Cannot overwrite a value"),
    "toml-syntax": ("10-a.toml", "3:6", "TOML syntax error: Invalid value"),
    "toml-unterminated-string": ("10-a.toml", "3:32", "TOML syntax error: Illegal character '\\n'"),
    "two-entries-on-a-list-line": (
        "business.txt",
        "1:1",
        '"203.0.113.0/24 198.51.100.0/24": write one address or CIDR a line',
    ),
    "unknown-default-key": ("10-a.toml", "4:1", "unknown key 'log' (known keys: action)"),
    "unknown-rule-key": ("10-a.toml", "9:1", "unknown key 'ports' (did you mean 'dport'?)"),
    "unknown-set": (
        "10-a.toml",
        "6:1",
        "src: unknown set 'subscriber' (did you mean 'subscribers'?)",
    ),
    "unknown-set-in-dst-list": ("10-a.toml", "6:22", "dst: unknown set 'relays'"),
    "unknown-set-key": ("10-a.toml", "3:1", "unknown key 'cidr' (did you mean 'cidrs'?)"),
    "unknown-top-level-key": ("10-a.toml", "2:1", "unknown key 'rules' (did you mean 'rule'?)"),
}


def fake_dns(name: str) -> list[str]:
    """The resolver of the fixtures: smtp.example.net resolves, nothing else does."""
    if name == "smtp.example.net":
        return ["198.51.100.26", "2001:db8:25::26"]
    raise OSError(-2, "Name or service not known")


def expected_message(case: Path, file: str, line: str | None, message: str) -> str:
    where = str(case / file) if file else str(case)
    if line is not None:
        where += f":{line}"
    return f"{where}: {message.format(case=case)}"


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in BROKEN.iterdir()) == sorted(CASES)
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_fixture_reports_exactly_its_located_message(name: str) -> None:
    """Each fixture has one mistake: exactly one message, at its place; and no policy."""
    case = BROKEN / name
    file, line, message = CASES[name]
    with pytest.raises(PolicyError) as caught:
        load_ruleset([case], resolve=fake_dns)
    assert caught.value.messages == [expected_message(case, file, line, message)]


def test_errors_in_several_files_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_text('[[rule]]\nid = "a"\naction = "deny"\n')
    (tmp_path / "20-b.toml").write_text('[[rule]]\nid = "b"\ndport = 0\naction = "allow"\n')
    (tmp_path / "30-c.toml").write_text("[[rule]\n")
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path])
    files = [m.split(":", 1)[0] for m in caught.value.messages]
    assert files == [str(tmp_path / n) for n in ("10-a.toml", "20-b.toml", "30-c.toml")]


def test_directory_files_load_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "20-late.toml").write_text('[[rule]]\nid = "late"\naction = "drop"\n')
    (tmp_path / "10-early.toml").write_text('[[rule]]\nid = "early"\naction = "allow"\n')
    (tmp_path / ".hidden.toml").write_text("not toml at all [")
    (tmp_path / "notes.txt").write_text("not a rule file")
    ruleset = load_ruleset([tmp_path])
    assert [rule.id for rule in ruleset.rules] == ["early", "late"]
    assert [rule.ruleset for rule in ruleset.rules] == ["10-early.toml", "20-late.toml"]


def test_paths_keep_their_order_and_a_file_counts_once(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "50-x.toml").write_text('[[rule]]\nid = "x"\naction = "allow"\n')
    (second / "10-y.toml").write_text('[[rule]]\nid = "y"\naction = "allow"\n')
    files, problems = rule_files([second, first, first / "50-x.toml"])
    assert problems == []
    assert files == [second / "10-y.toml", first / "50-x.toml"]
    assert [rule.id for rule in load_ruleset([second, first]).rules] == ["y", "x"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path / "nothere"])
    assert caught.value.messages == [f"{tmp_path / 'nothere'}: no such file or directory"]


def test_no_paths_is_an_error() -> None:
    with pytest.raises(PolicyError, match="no rule paths given"):
        load_ruleset([])


def test_undecodable_rule_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_bytes(b"\xff\xfe[[rule]]")
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        load_ruleset([tmp_path])


def test_list_file_is_read_relative_to_the_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.d"
    (rules / "lists").mkdir(parents=True)
    (rules / "10-a.toml").write_text(
        '[sets.business]\nfiles = ["lists/b.txt"]\n\n'
        '[[rule]]\nid = "b"\nsrc = "business"\naction = "allow"\n'
    )
    (rules / "lists" / "b.txt").write_text("# customers\n\n203.0.113.0/24  # acme\n")
    ruleset = load_ruleset([rules])
    assert ruleset.sources == (rules / "10-a.toml", rules / "lists" / "b.txt")
    assert ruleset.rules[0].src is not None
    assert ruleset.rules[0].src.contains(4, 0xCB007105)  # 203.0.113.5


def test_undecodable_rule_file_names_the_line_and_byte(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_bytes(b'[default]\naction = "allow"\n# caf\xe9\n')
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path])
    assert caught.value.messages == [f"{tmp_path / '10-a.toml'}:3:6: not UTF-8 text (byte 0xe9)"]


def test_a_rule_file_beyond_the_size_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "MAX_RULE_FILE", 100)
    (tmp_path / "10-a.toml").write_text("# " + "x" * 200 + '\n[default]\naction = "allow"\n')
    with pytest.raises(PolicyError, match=r"10-a.toml: is larger than 0 MiB"):
        load_ruleset([tmp_path])


def test_a_fifo_as_list_file_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_text(
        '[sets.s]\nfiles = ["fifo"]\n[[rule]]\nid = "r"\nsrc = "s"\naction = "allow"\n'
    )
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path])
    expected = f'{tmp_path / "10-a.toml"}:2:10: files: list file "fifo" is not a regular file'
    assert caught.value.messages == [expected]


def test_an_unexpected_error_while_loading_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "10-a.toml").write_text(
        '[sets.s]\nfiles = ["l.txt"]\n[[rule]]\nid = "r"\nsrc = "s"\naction = "allow"\n'
    )
    (tmp_path / "l.txt").write_text("192.0.2.1\n")

    def broken(text: str, label: str = "") -> object:
        raise KeyError("a bug")

    monkeypatch.setattr(compiler, "parse_address_list", broken)
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path])
    assert caught.value.messages == [
        f"{tmp_path / 'l.txt'}: unexpected error while loading: KeyError: 'a bug'"
    ]


def test_an_unexpected_error_outside_the_compiler_names_a_rule_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(paths: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(loader, "rule_files", broken)
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path])
    assert caught.value.messages == [
        f"{tmp_path}: unexpected error while loading: RuntimeError: boom"
    ]


def test_deep_nesting_is_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyError) as caught:
        load_ruleset([tmp_path])
    assert caught.value.messages == [
        f"{tmp_path / '10-a.toml'}:1:37: tables and arrays nest deeper than 32 levels"
    ]


def test_a_long_chain_of_set_unions_loads_and_a_long_cycle_is_reported(tmp_path: Path) -> None:
    chain = "".join(f'[sets.s{i}]\nsets = ["s{i + 1}"]\n' for i in range(3000))
    rule = '[[rule]]\nid = "r"\nsrc = "s0"\naction = "allow"\n'
    (tmp_path / "10-a.toml").write_text(chain + '[sets.s3000]\ncidrs = ["192.0.2.0/24"]\n' + rule)
    ruleset = load_ruleset([tmp_path])
    assert ruleset.rules[0].src is not None and ruleset.rules[0].src.contains(4, 0xC0000201)
    (tmp_path / "10-a.toml").write_text(chain + '[sets.s3000]\nsets = ["s0"]\n' + rule)
    with pytest.raises(PolicyError, match=r"cycle between sets: s0 -> s1 -> s2 .*characters"):
        load_ruleset([tmp_path])
