"""The daemon config: defaults, path resolution, and every broken fixture's located message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portguard.config import model as config_module
from portguard.config.model import (
    Config,
    ConfigError,
    HookConfig,
    LogConfig,
    NetworkConfig,
    Output,
    QueueConfig,
    RulesConfig,
    config_problem,
    load_config,
    parse_config,
    syslog_address_problem,
)
from portguard.shipped import CONFIG_PATH

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken" / "config"

# fixture name -> "line:column" and message
CASES: dict[str, tuple[str, str]] = {
    "syntax-error": ("3:11", "TOML syntax error: Invalid value"),
    "unknown-queue-key": ("3:1", "unknown key 'threads' (known keys: num, workers, fail_mode,"),
    "unknown-table": ("2:1", "unknown key 'rule' (did you mean 'rules'?)"),
    "port-zero": ("2:10", "ports: 0 is out of range 1-65535"),
    "port-too-high": ("4:3", "ports: 65536 is out of range 1-65535"),
    "port-duplicate": ("2:24", "ports: 25 is listed twice"),
    "port-string": ("2:10", "ports: entry must be an integer, not a string"),
    "workers-zero": ("2:1", "workers: 0 is out of range 1-64"),
    "workers-too-many": ("2:1", "workers: 65 is out of range 1-64"),
    "queue-num-negative": ("2:1", "num: -1 is out of range 0-65535"),
    "queue-range-overflow": ("3:1", "workers: queues 65530-65537 go past the last queue number"),
    "max-len-zero": ("2:1", "max_len: 0 is out of range 1-4294967295"),
    "fail-mode": ("2:1", "fail_mode: must be 'open' or 'closed', not \"bypass\""),
    "backend": ("2:1", "backend: must be 'auto', 'nftables' or 'iptables', not \"ebpf\""),
    "chains-unknown": ("2:22", "chains: entry must be 'forward' or 'output', not \"input\""),
    "chains-empty": ("2:1", "chains: needs at least one entry"),
    "wan-empty": ("2:1", "wan: needs at least one entry"),
    "wan-bad-name": ("2:16", 'wan: "br-lan/1" is not an interface name'),
    "wan-too-long": ("2:8", 'wan: "a-very-long-interface" is not an interface name'),
    "rules-paths-string": ("2:1", "paths: must be an array, not a string"),
    "file-output-without-path": ("2:33", "outputs: type \"file\" needs 'path'"),
    "syslog-address-no-scheme": (
        "3:22",
        'address: "collector.example:514" is not of the form udp://, tcp:// or tls://host:port',
    ),
    "syslog-address-bad-port": ("2:31", "address: port 70000 is out of range 1-65535"),
    "syslog-without-address": ("2:12", "outputs: type \"syslog\" needs 'address'"),
    "stdout-with-address": ("2:31", "outputs: 'address' does not apply to type \"stdout\""),
    "output-unknown-key": (
        "2:54",
        "unknown key 'rotate' (known keys: type, path, address, format, level, buffer, prefix, "
        "page_cache, ca, cert, key, server_name)",
    ),
    "output-unknown-type": ("2:14", "type: must be 'stdout', 'file' or 'syslog', not \"kafka\""),
    "outputs-empty": ("2:1", "outputs: needs at least one entry"),
    "output-format-unknown": ("2:53", "format: must be 'ecs', 'ocsf' or 'cef', not \"leef\""),
    "resolve-interval-negative": ("2:1", "resolve_interval: -1 is out of range 0-604800"),
}


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.stem for p in BROKEN.glob("*.toml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_config_reports_located_message(name: str) -> None:
    path = BROKEN / f"{name}.toml"
    line, message = CASES[name]
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    wanted = f"{path}:{line}: {message}"
    assert any(wanted in m for m in caught.value.messages), caught.value.messages


def test_empty_file_gives_the_documented_defaults() -> None:
    config = parse_config("", Path("/etc/portguard/portguard.toml"))
    assert config == Config.for_file(
        Path("/etc/portguard/portguard.toml"),
        queue=QueueConfig(num=0, workers=1, fail_mode="closed", max_len=4096),
        network=NetworkConfig(wan=("eth0",)),
        hook=HookConfig(backend="auto", ports=(25, 465, 587), chains=("forward",)),
        rules=RulesConfig(paths=(Path("/etc/portguard/rules.d"),), resolve_interval=300),
        log=LogConfig(outputs=(Output(type="stdout"),)),
    )


def test_shipped_config_is_valid_and_all_defaults() -> None:
    config = load_config(CONFIG_PATH)
    assert config == parse_config("", CONFIG_PATH)


FULL = """
[queue]
num = 10
workers = 4
fail_mode = "open"
max_len = 1024

[network]
wan = ["wan0", "ppp0"]

[hook]
backend = "iptables"
ports = [25, 2525]
chains = ["forward", "output"]

[rules]
paths = ["rules.d", "/srv/extra.toml", "~/more"]
resolve_interval = 60

[log]
outputs = [
  { type = "stdout" },
  { type = "file", path = "log/decisions.json" },
  { type = "syslog", address = "tcp://[2001:db8::514]:6514" },
]
"""


def test_full_config_is_read_and_relative_paths_follow_the_file() -> None:
    config = parse_config(FULL, Path("/etc/portguard/portguard.toml"))
    assert config.queue == QueueConfig(num=10, workers=4, fail_mode="open", max_len=1024)
    assert list(config.queue.numbers) == [10, 11, 12, 13]
    assert config.network.wan == ("wan0", "ppp0")
    assert config.hook == HookConfig(
        backend="iptables", ports=(25, 2525), chains=("forward", "output")
    )
    assert config.rules.resolve_interval == 60
    assert config.rules.paths == (
        Path("/etc/portguard/rules.d"),
        Path("/srv/extra.toml"),
        Path("~/more").expanduser(),
    )
    assert config.log.outputs[1] == Output(
        type="file", path=Path("/etc/portguard/log/decisions.json")
    )
    assert config.log.outputs[2].endpoint == ("tcp", "2001:db8::514", 6514)


def test_each_output_has_its_own_format_and_ecs_is_the_default() -> None:
    text = """[log]
outputs = [{ type = "stdout" },
           { type = "file", path = "/var/log/pg.ocsf", format = "ocsf" },
           { type = "syslog", address = "udp://192.0.2.1:514", format = "cef" }]
"""
    outputs = parse_config(text, Path("/etc/portguard/portguard.toml")).log.outputs
    assert [o.format for o in outputs] == ["ecs", "ocsf", "cef"]
    assert outputs[1] == Output(type="file", path=Path("/var/log/pg.ocsf"), format="ocsf")


def test_relative_config_path_anchors_to_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pg.toml").write_text('[rules]\npaths = ["rules.d"]\n')
    config = load_config(Path("conf/pg.toml"))
    assert config.path == Path("conf/pg.toml")
    assert config.rules.paths == (tmp_path / "conf" / "rules.d",)


def test_all_errors_are_reported_at_once_in_line_order() -> None:
    text = '[queue]\nworkers = 0\nfail_mode = "x"\n[hook]\nports = [25, 25]\nchains = []\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("pg.toml"))
    assert [m.split(":")[1] for m in caught.value.messages] == ["2", "3", "5", "6"]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "none.toml")
    assert caught.value.messages == [
        f"{tmp_path / 'none.toml'}: cannot read config: no such file or directory"
    ]


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("udp://192.0.2.10:514", None),
        ("tcp://collector.example.net:6514", None),
        ("tls://collector.example.net:6514", None),
        ("udp://[2001:db8::1]:514", None),
        ("http://192.0.2.10:514", "is not of the form"),
        ("udp://192.0.2.10", "is not of the form"),
        ("udp://[2001:db8::zz]:514", "is not an IPv6 address in brackets"),
        ("udp://bad_host:514", "is not a host name or address"),
        ("udp://192.0.2.10:0", "port 0 is out of range"),
    ],
)
def test_syslog_address(address: str, problem: str | None) -> None:
    found = syslog_address_problem(address)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_endpoint_of_a_non_syslog_output_is_an_error() -> None:
    with pytest.raises(ValueError, match="no syslog address"):
        _ = Output(type="stdout").endpoint


def test_outputs_take_a_level_a_buffer_and_tls_settings(tmp_path: Path) -> None:
    text = (
        "[log]\noutputs = [\n"
        '  { type = "stdout", prefix = "always", level = "warning" },\n'
        '  { type = "syslog", address = "tls://siem.example.net:6514", ca = "ca.pem", '
        'cert = "client.pem", key = "client.key", server_name = "siem", buffer = 1000 },\n'
        "]\nflow_end = false\n"
    )
    config = parse_config(text, tmp_path / "portguard.toml")
    stdout, syslog = config.log.outputs
    assert (stdout.prefix, stdout.level, stdout.buffer) == ("always", "warning", 65536)
    assert (syslog.level, syslog.buffer, syslog.server_name) == ("info", 1000, "siem")
    assert (syslog.ca, syslog.cert, syslog.key) == (
        tmp_path / "ca.pem",
        tmp_path / "client.pem",
        tmp_path / "client.key",
    )
    assert config.log.flow_end is False


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ('{ type = "file", path = "x", prefix = "always" }',
         "2:41: outputs: 'prefix' does not apply to type \"file\""),
        ('{ type = "syslog", address = "tcp://192.0.2.9:514", ca = "ca.pem" }',
         "2:64: outputs: 'ca' applies only to a tls:// syslog address"),
        ('{ type = "syslog", address = "tls://192.0.2.9:6514", cert = "c.pem" }',
         "2:12: outputs: a client certificate needs both 'cert' and 'key'"),
        ('{ type = "stdout", level = "loud" }', "level: must be"),
        ('{ type = "stdout", buffer = 0 }', "buffer: 0 is out of range 1-10000000"),
        ('{ type = "stdout", page_cache = 16 }',
         "2:31: outputs: 'page_cache' does not apply to type \"stdout\""),
        ('{ type = "file", path = "x", page_cache = -1 }', "page_cache: -1 is out of range"),
    ],
)  # fmt: skip
def test_output_option_errors(tmp_path: Path, output: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[log]\noutputs = [{output}]\n", tmp_path / "p.toml")
    assert any(message in m for m in caught.value.messages), caught.value.messages


def test_keep_on_stop_needs_fail_mode_closed(tmp_path: Path) -> None:
    kept = parse_config("[hook]\nkeep_on_stop = true\n", tmp_path / "p.toml")
    assert kept.hook.keep_on_stop is True and kept.queue.fail_mode == "closed"
    with pytest.raises(ConfigError) as caught:
        parse_config('[queue]\nfail_mode = "open"\n[hook]\nkeep_on_stop = true\n',
                     tmp_path / "p.toml")  # fmt: skip
    assert any(":4:" in m and "keep_on_stop" in m for m in caught.value.messages)


@pytest.mark.parametrize("name", ["eth0:1", ".", "..", "eth\x00", "eth\u200b0"])
def test_names_the_kernel_refuses_are_no_interface_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="is not an interface name"):
        parse_config(f"[network]\nwan = [{json.dumps(name)}]\n", tmp_path / "c.toml")
    assert parse_config('[network]\nwan = ["ppp0", "enp3s0.100"]\n', tmp_path / "c.toml")


def test_a_hostile_config_file_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"[queue]\nnum = 0\n# \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.messages == [f"{path}:3:3: not UTF-8 text (byte 0xff)"]
    path.write_text("x = " + "[" * 10_000 + "]" * 10_000)
    with pytest.raises(ConfigError, match="nest deeper than 32 levels"):
        load_config(path)
    path.write_text("# " + "x" * (1 << 20))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(path)


def test_an_unexpected_error_while_loading_the_config_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str, path: Path) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(config_module, "parse_config", broken)
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.messages == [f"{path}: unexpected error while loading: RuntimeError: boom"]


def test_config_problem_locates_a_key_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[queue]\nnum = 0\n\n[network]\nwan = ["a", "b"]\n')
    assert config_problem(path, ("network", "wan", 1), "m").format() == f"{path}:5:13: m"
    assert config_problem(tmp_path / "gone.toml", ("network",), "m").format() == (
        f"{tmp_path / 'gone.toml'}: m"
    )


@pytest.mark.parametrize(
    ("value", "limit"),  # limit: rate a second, burst, prefix6
    [
        (None, (200, 1000, 64)),  # on by default
        ("true", (200, 1000, 64)),
        ("false", (0, 1000, 64)),
        ('{ rate = "0/second" }', (0, 1000, 64)),
        ('{ rate = "50/second", burst = 100, prefix6 = 56 }', (50, 100, 56)),
    ],
)
def test_per_source_limit(value: str | None, limit: tuple[int, int, int]) -> None:
    text = "[queue]\n" + (f"per_source = {value}\n" if value else "")
    per_source = parse_config(text, Path("/etc/portguard/portguard.toml")).queue.per_source
    assert (per_source.rate, per_source.burst, per_source.prefix6) == limit
    assert per_source.enabled == (limit[0] > 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{ rate = "20/minute" }', '2:16: rate: "20/minute" is not a rate per second'),
        ('{ rate = "100001/second" }', "2:16: rate: 100001 is out of range 0-100000"),
        ('{ rate = "5/s", burst = 0 }', "2:30: burst: 0 is out of range 1-1000000"),
        ("{ prefix6 = 129 }", "2:16: prefix6: 129 is out of range 1-128"),
        ('{ rates = "5/s" }', "2:16: unknown key 'rates'"),
    ],
)
def test_per_source_errors_are_located(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[queue]\nper_source = {value}\n", Path("/etc/pg.toml"))
    assert any(message in line for line in caught.value.messages), caught.value.messages


def test_internal_address_space(tmp_path: Path) -> None:
    """[network] internal: the address space behind the gateway (for `portguard replay`)."""
    path = tmp_path / "c.toml"
    assert parse_config("", path).network.internal == ()
    text = '[network]\ninternal = ["100.64.0.0/10", "2001:db8:64::/48", "192.0.2.7"]\n'
    config = parse_config(text, path)
    assert [str(network) for network in config.network.internal_networks] == [
        "100.64.0.0/10",
        "2001:db8:64::/48",
        "192.0.2.7",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '["10.0.0.1/8"]',
            '2:13: internal: "10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)',
        ),
        ('["eth0"]', '2:13: internal: "eth0" is not a valid IP address or CIDR'),
        ('"10.0.0.0/8"', "2:1: internal: must be an array, not a string"),
    ],
)
def test_internal_errors_are_located(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "c.toml"
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[network]\ninternal = {value}\n", path)
    assert any(m.startswith(f"{path}:{message}") for m in caught.value.messages), (
        caught.value.messages
    )


def test_the_deny_cache_is_on_for_ten_seconds_by_default_and_0_turns_it_off() -> None:
    path = Path("/etc/portguard/portguard.toml")
    assert parse_config("", path).queue.deny_cache == 10
    assert parse_config("[queue]\ndeny_cache = 0\n", path).queue.deny_cache == 0
    with pytest.raises(ConfigError) as caught:
        parse_config("[queue]\ndeny_cache = 3601\n", path)
    assert any("deny_cache: 3601 is out of range 0-3600" in m for m in caught.value.messages)


def test_the_fast_path_is_on_by_default_and_can_be_turned_off() -> None:
    path = Path("portguard.toml")
    assert parse_config("", path).queue.fast_path is True
    assert parse_config("[queue]\nfast_path = false\n", path).queue.fast_path is False
