"""The daemon config (``/etc/portguard/portguard.toml``): parse, validate, resolve paths.

Every key of the contract in DESIGN.md, nothing else: an unknown key is an error. Every error is
reported at once as ``path:line: message`` (ConfigError.messages). Relative paths in the file
(rule paths, a log file) resolve against the directory of the config file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from portguard.errors import ConfigError, Problem
from portguard.sourcemap import KeyPath
from portguard.tomlsource import Spec, parse_toml, validate

__all__ = [
    "Config",
    "ConfigError",
    "HookConfig",
    "LogConfig",
    "MetricsConfig",
    "NetworkConfig",
    "Output",
    "QueueConfig",
    "RulesConfig",
    "listen_address_problem",
    "load_config",
    "parse_config",
    "syslog_address_problem",
]

FailMode = Literal["open", "closed"]
Backend = Literal["auto", "nftables", "iptables"]
Chain = Literal["forward", "output"]
OutputType = Literal["stdout", "file", "syslog"]
LogFormat = Literal["ecs", "ocsf", "cef"]  # decisionlog/formats.py
LogLevel = Literal["debug", "info", "notice", "warning", "error"]  # decisionlog/sinks.py
Prefix = Literal["auto", "always", "never"]
DEFAULT_BUFFER = 65536  # events waiting for one output
MAX_BUFFER = 10_000_000

DEFAULT_RULES_PATH = Path("/etc/portguard/rules.d")
DEFAULT_RESOLVE_INTERVAL = 300
MAX_RESOLVE_INTERVAL = 7 * 86400
DEFAULT_CONTROL_SOCKET = Path("/run/portguard/control.sock")
MAX_WORKERS = 64
MAX_QUEUE_NUM = 65535
_SYSLOG_ADDRESS = re.compile(
    r"^(?P<proto>udp|tcp|tls)://(?P<host>\[[^\]]*\]|[^:/\[\]]+):(?P<port>\d+)$"
)
_LISTEN_ADDRESS = re.compile(r"^(?P<host>\[[^\]]*\]|[^:\[\]]+):(?P<port>\d+)$")
_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$"
)


# --- the resolved config -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueConfig:
    num: int = 0
    workers: int = 1
    fail_mode: FailMode = "closed"
    max_len: int = 4096

    @property
    def numbers(self) -> range:
        """The NFQUEUE numbers the workers bind: num .. num+workers-1."""
        return range(self.num, self.num + self.workers)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    wan: tuple[str, ...] = ("eth0",)


@dataclass(frozen=True, slots=True)
class HookConfig:
    backend: Backend = "auto"
    ports: tuple[int, ...] = (25, 465, 587)
    chains: tuple[Chain, ...] = ("forward",)
    keep_on_stop: bool = False  # SIGTERM leaves the hooks (fail_mode "closed" only)


@dataclass(frozen=True, slots=True)
class RulesConfig:
    paths: tuple[Path, ...] = (DEFAULT_RULES_PATH,)
    reevaluate: bool = False  # after a reload, end allowed connections the new policy denies
    resolve_interval: int = DEFAULT_RESOLVE_INTERVAL  # seconds between reloads that re-resolve
    # the host names of the rule files (only when some set names hosts); 0 = never


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    control_socket: Path = DEFAULT_CONTROL_SOCKET  # `portguard reload` talks to the daemon here


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint: ``listen = "127.0.0.1:9477"``; None (no [metrics]) = off."""

    listen: str | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, an IPv6 host without brackets; None when off."""
        match = _LISTEN_ADDRESS.match(self.listen or "")
        if match is None:
            return None
        return match["host"].strip("[]"), int(match["port"])


@dataclass(frozen=True, slots=True)
class Output:
    """A decision-log destination. ``path`` for type file, ``address`` for type syslog."""

    type: OutputType
    path: Path | None = None
    address: str | None = None  # "udp://host:port", "tcp://host:port" or "tls://host:port"
    format: LogFormat = "ecs"  # how its events are written: ECS JSON, OCSF JSON or CEF
    level: LogLevel = "info"  # the least severe event it takes
    buffer: int = DEFAULT_BUFFER  # events that may wait for it; beyond: dropped and counted
    prefix: Prefix = "auto"  # stdout: journald's <N> priority prefix ("auto": under journald)
    ca: Path | None = None  # tls: CA bundle that verifies the collector (default: the system's)
    cert: Path | None = None  # tls: client certificate (mutual TLS), with key
    key: Path | None = None
    server_name: str | None = None  # tls: name checked in the certificate (default: host)

    @property
    def endpoint(self) -> tuple[str, str, int]:
        """A syslog output's (transport, host, port); IPv6 hosts without brackets."""
        match = _SYSLOG_ADDRESS.match(self.address or "")
        if match is None:
            raise ValueError(f"output {self.type} has no syslog address")
        return match["proto"], match["host"].strip("[]"), int(match["port"])


@dataclass(frozen=True, slots=True)
class LogConfig:
    outputs: tuple[Output, ...] = (Output("stdout"),)
    flood_window: float = 60.0  # seconds identical denies are counted, not logged (0 = off)
    flow_end: bool = True  # a flow-end event (duration, packets, bytes) per allowed connection


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    queue: QueueConfig = field(default_factory=QueueConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    hook: HookConfig = field(default_factory=HookConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    log: LogConfig = field(default_factory=LogConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


# --- the file's shape ----------------------------------------------------------------------


def _within(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    return check


def _interface_name(name: str) -> str:
    if not 1 <= len(name) <= 15 or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f'"{name}" is not an interface name (1-15 characters, no "/" or spaces)')
    return name


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


class QueueSpec(Spec):
    num: Annotated[int, AfterValidator(_within(0, MAX_QUEUE_NUM))] = 0
    workers: Annotated[int, AfterValidator(_within(1, MAX_WORKERS))] = 1
    fail_mode: FailMode = "closed"
    max_len: Annotated[int, AfterValidator(_within(1, 2**32 - 1))] = 4096


class NetworkSpec(Spec):
    wan: list[Annotated[str, AfterValidator(_interface_name)]] = Field(default=["eth0"])


class HookSpec(Spec):
    backend: Backend = "auto"
    ports: list[Annotated[int, AfterValidator(_within(1, 65535))]] = Field(default=[25, 465, 587])
    chains: list[Chain] = Field(default=["forward"])
    keep_on_stop: bool = False


class RulesSpec(Spec):
    paths: list[Annotated[str, AfterValidator(_not_blank)]] = Field(
        default=[str(DEFAULT_RULES_PATH)]
    )
    reevaluate: bool = False
    resolve_interval: Annotated[int, AfterValidator(_within(0, MAX_RESOLVE_INTERVAL))] = (
        DEFAULT_RESOLVE_INTERVAL
    )


class DaemonSpec(Spec):
    control_socket: Annotated[str, AfterValidator(_not_blank)] = str(DEFAULT_CONTROL_SOCKET)


def _listen_address(address: str) -> str:
    problem = listen_address_problem(address)
    if problem:
        raise ValueError(problem)
    return address


class MetricsSpec(Spec):
    listen: Annotated[str, AfterValidator(_listen_address)] | None = None


class OutputSpec(Spec):
    type: OutputType
    path: Annotated[str, AfterValidator(_not_blank)] | None = None
    address: str | None = None
    format: LogFormat = "ecs"
    level: LogLevel = "info"
    buffer: Annotated[int, AfterValidator(_within(1, MAX_BUFFER))] = DEFAULT_BUFFER
    prefix: Prefix = "auto"
    ca: Annotated[str, AfterValidator(_not_blank)] | None = None
    cert: Annotated[str, AfterValidator(_not_blank)] | None = None
    key: Annotated[str, AfterValidator(_not_blank)] | None = None
    server_name: Annotated[str, AfterValidator(_not_blank)] | None = None


class LogSpec(Spec):
    outputs: list[OutputSpec] = Field(default=[OutputSpec(type="stdout")])
    flood_window: Annotated[int, AfterValidator(_within(0, 86400))] = 60
    flow_end: bool = True


class ConfigSpec(Spec):
    queue: QueueSpec = QueueSpec()
    network: NetworkSpec = NetworkSpec()
    hook: HookSpec = HookSpec()
    rules: RulesSpec = RulesSpec()
    log: LogSpec = LogSpec()
    daemon: DaemonSpec = DaemonSpec()
    metrics: MetricsSpec = MetricsSpec()


# --- checks across values (on the raw data, so they run even when other keys are wrong) -----


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _array(table: dict[str, Any], name: str) -> list[Any] | None:
    value = table.get(name)
    return value if isinstance(value, list) else None


def _duplicates(prefix: KeyPath, values: list[Any]) -> Iterator[tuple[KeyPath, str]]:
    seen: list[Any] = []
    for index, value in enumerate(values):
        if value in seen and not isinstance(value, dict | list):
            shown = f'"{value}"' if isinstance(value, str) else str(value)
            yield (*prefix, index), f"{prefix[-1]}: {shown} is listed twice"
        seen.append(value)


def _check_list(data: dict[str, Any], table: str, key: str) -> Iterator[tuple[KeyPath, str]]:
    values = _array(_table(data, table), key)
    if values is None:
        return
    if not values:
        yield (table, key), f"{key}: needs at least one entry"
    if key != "outputs":
        yield from _duplicates((table, key), values)


def _check_queue(queue: dict[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    num, workers = queue.get("num", 0), queue.get("workers", 1)
    if not (_is_int(num) and _is_int(workers)):
        return
    last = num + workers - 1
    if 0 <= num <= MAX_QUEUE_NUM and 1 <= workers <= MAX_WORKERS and last > MAX_QUEUE_NUM:
        message = f"workers: queues {num}-{last} go past the last queue number {MAX_QUEUE_NUM}"
        yield ("queue", "workers"), message


def _check_keep_on_stop(data: dict[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    fail_mode = _table(data, "queue").get("fail_mode", "closed")
    if _table(data, "hook").get("keep_on_stop") is True and fail_mode == "open":
        message = 'keep_on_stop: needs fail_mode = "closed" (with "open" the hooks kept after a '
        yield ("hook", "keep_on_stop"), message + "stop would let every connection through)"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_output(index: int, output: object) -> Iterator[tuple[KeyPath, str]]:
    if not isinstance(output, dict) or output.get("type") not in _OUTPUT_KEYS:
        return  # the shape check reports it
    key: KeyPath = ("log", "outputs", index)
    kind = output["type"]
    wanted = _OUTPUT_KEYS[kind]
    for name in ("path", "address"):
        if name in wanted and name not in output:
            yield key, f"outputs: type \"{kind}\" needs '{name}'"
        elif name in output and name not in wanted:
            yield (*key, name), f"outputs: '{name}' does not apply to type \"{kind}\""
    address = output.get("address")
    if "address" in wanted and isinstance(address, str):
        problem = syslog_address_problem(address)
        if problem:
            yield (*key, "address"), f"address: {problem}"
    yield from _check_output_options(key, kind, output)


def _check_output_options(
    key: KeyPath, kind: str, output: dict[str, Any]
) -> Iterator[tuple[KeyPath, str]]:
    """Options that only some outputs take: prefix (stdout), TLS files (tls:// syslog)."""
    if "prefix" in output and kind != "stdout":
        yield (*key, "prefix"), f"outputs: 'prefix' does not apply to type \"{kind}\""
    address = output.get("address")
    tls = kind == "syslog" and isinstance(address, str) and address.startswith("tls://")
    for name in _TLS_KEYS:
        if name in output and not tls:
            yield (*key, name), f"outputs: '{name}' applies only to a tls:// syslog address"
    if tls and ("cert" in output) != ("key" in output):
        yield key, "outputs: a client certificate needs both 'cert' and 'key'"


_OUTPUT_KEYS: dict[str, tuple[str, ...]] = {"stdout": (), "file": ("path",), "syslog": ("address",)}
_TLS_KEYS = ("ca", "cert", "key", "server_name")


def syslog_address_problem(address: str) -> str | None:
    """Why ``address`` is not ``udp|tcp|tls://host:port``; None when it is."""
    match = _SYSLOG_ADDRESS.match(address)
    if match is None:
        return f'"{address}" is not of the form udp://, tcp:// or tls://host:port'
    host, port = match["host"], int(match["port"])
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f'"{host}" is not an IPv6 address in brackets'
    elif not _HOSTNAME.match(host):
        return f'"{host}" is not a host name or address'
    if not 1 <= port <= 65535:
        return f"port {port} is out of range 1-65535"
    return None


def listen_address_problem(address: str) -> str | None:
    """Why ``address`` is not ``ip:port`` (an IPv6 address in brackets); None when it is."""
    match = _LISTEN_ADDRESS.match(address)
    if match is None:
        return f'"{address}" is not of the form address:port (e.g. "127.0.0.1:9477")'
    host, port = match["host"], int(match["port"])
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f'"{host}" is not an IP address (IPv6 in brackets: "[::1]:9477")'
    if host.startswith("[") and ip.version == 4:
        return f'"{host}": brackets are for IPv6 addresses only'
    if not 1 <= port <= 65535:
        return f"port {port} is out of range 1-65535"
    return None


def _checks(data: dict[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    yield from _check_queue(_table(data, "queue"))
    yield from _check_keep_on_stop(data)
    for table, key in _LISTS:
        yield from _check_list(data, table, key)
    for index, output in enumerate(_array(_table(data, "log"), "outputs") or []):
        yield from _check_output(index, output)


_LISTS = (
    ("network", "wan"),
    ("hook", "ports"),
    ("hook", "chains"),
    ("rules", "paths"),
    ("log", "outputs"),
)


# --- building the config -------------------------------------------------------------------


def _resolve(base: Path, text: str) -> Path:
    return base / Path(text).expanduser()


def _build(spec: ConfigSpec, path: Path) -> Config:
    base = path.absolute().parent
    outputs = tuple(_output(o, base) for o in spec.log.outputs)
    return Config(
        path=path,
        queue=QueueConfig(
            spec.queue.num, spec.queue.workers, spec.queue.fail_mode, spec.queue.max_len
        ),
        network=NetworkConfig(tuple(spec.network.wan)),
        hook=HookConfig(
            spec.hook.backend,
            tuple(spec.hook.ports),
            tuple(spec.hook.chains),
            spec.hook.keep_on_stop,
        ),
        rules=RulesConfig(
            tuple(_resolve(base, p) for p in spec.rules.paths),
            spec.rules.reevaluate,
            spec.rules.resolve_interval,
        ),
        log=LogConfig(outputs, float(spec.log.flood_window), spec.log.flow_end),
        daemon=DaemonConfig(_resolve(base, spec.daemon.control_socket)),
        metrics=MetricsConfig(spec.metrics.listen),
    )


def _output(spec: OutputSpec, base: Path) -> Output:
    def resolved(text: str | None) -> Path | None:
        return _resolve(base, text) if text else None

    return Output(
        spec.type, resolved(spec.path), spec.address, spec.format, spec.level, spec.buffer,
        spec.prefix, resolved(spec.ca), resolved(spec.cert), resolved(spec.key), spec.server_name,
    )  # fmt: skip


def parse_config(text: str, path: Path) -> Config:
    """Validate config text; ``path`` names the file in messages and anchors relative paths."""
    source = parse_toml(path, text)
    if isinstance(source, Problem):
        raise ConfigError([source])
    spec = validate(source, ConfigSpec)
    problems = [source.problem(key, message) for key, message in _checks(source.data)]
    if isinstance(spec, list) or problems:
        raise ConfigError([*problems, *(spec if isinstance(spec, list) else [])])
    return _build(spec, path)


def load_config(path: Path) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([Problem(path, None, f"cannot read config: {_reason(error)}")]) from None
    return parse_config(text, path)


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error)
