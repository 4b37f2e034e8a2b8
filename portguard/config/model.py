"""The daemon config (``/etc/portguard/portguard.toml``): parse, validate, resolve paths.

Every key of docs/config.md, nothing else: an unknown key is an error. Every error is
reported at once as ``path:line:col: message`` (ConfigError.messages). Relative paths in the
file (rule paths, output and TLS files, [daemon] paths) resolve against the directory of the
config file. Each table is one frozen pydantic model below (its keys, types and defaults, and
the values derived from them); the kinds and limits of single values are `schema.py`, checks
across keys are `checks.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PrivateAttr

from portguard.config.checks import (
    LISTEN_ADDRESS,
    SYSLOG_ADDRESS,
    checks,
    listen_address_problem,
    syslog_address_problem,
)
from portguard.config.schema import (
    ARRAY,
    DEFAULT_BUFFER,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_DENY_CACHE,
    DEFAULT_PAGE_CACHE,
    DEFAULT_PER_SOURCE_BURST,
    DEFAULT_PER_SOURCE_RATE,
    DEFAULT_RESOLVE_INTERVAL,
    DEFAULT_RULES_PATH,
    DEFAULT_STATE_DIR,
    MAX_BUFFER,
    MAX_DENY_CACHE,
    MAX_PAGE_CACHE,
    MAX_PER_SOURCE_BURST,
    MAX_RESOLVE_INTERVAL,
    Backend,
    Chain,
    Cidr,
    FailMode,
    FileContext,
    FilePath,
    InterfaceName,
    ListenAddress,
    LogFormat,
    LogLevel,
    OutputType,
    PerSecond,
    Port,
    Prefix,
    QueueNum,
    Text,
    Workers,
    within,
)
from portguard.core.errors import ConfigError, Problem, unexpected
from portguard.core.policy.addresses import Network, parse_network
from portguard.core.sourcemap import KeyPath
from portguard.core.tomlsource import MIB, Spec, TextError, parse_toml, validate
from portguard.io.files import read_text

__all__ = [
    "Config",
    "ConfigError",
    "DaemonConfig",
    "HookConfig",
    "LogConfig",
    "MetricsConfig",
    "NetworkConfig",
    "Output",
    "PerSourceLimit",
    "QueueConfig",
    "RulesConfig",
    "config_problem",
    "listen_address_problem",
    "load_config",
    "parse_config",
    "syslog_address_problem",
]

# --- the config: one frozen model per table, each key with its type, limits and default ------


class PerSourceLimit(Spec):
    """The kernel's limit on new hooked connections from one source, before the queue.

    One IPv4 address, or one IPv6 prefix of ``prefix6`` bits (a /64 is one subscriber), may
    send ``rate`` SYNs a second to hooked ports, ``burst`` at once; the kernel drops the rest
    (and counts them) before they reach the queue everyone shares. ``rate`` 0 = off; it is
    written as in the file: ``"200/second"``.
    """

    rate: PerSecond = DEFAULT_PER_SOURCE_RATE
    burst: Annotated[int, within(1, MAX_PER_SOURCE_BURST)] = DEFAULT_PER_SOURCE_BURST
    prefix6: Annotated[int, within(1, 128)] = 64

    @property
    def enabled(self) -> bool:
        return self.rate > 0


def _switch(value: object) -> object:
    """``per_source = false`` turns the limit off, ``true`` takes the defaults."""
    if value is False:
        return {"rate": "0/second"}
    return {} if value is True else value


class QueueConfig(Spec):
    num: QueueNum = 0
    workers: Workers = 1
    fail_mode: FailMode = "closed"
    max_len: Annotated[int, within(1, 2**32 - 1)] = 4096
    per_source: Annotated[PerSourceLimit, BeforeValidator(_switch)] = PerSourceLimit()
    # seconds the kernel answers a denied (source, destination, port) itself (0: off)
    deny_cache: Annotated[int, within(0, MAX_DENY_CACHE)] = DEFAULT_DENY_CACHE
    # allows the gate gave answered again in C (io/fastpath.py): false decides every SYN in
    # Python, as before
    fast_path: bool = True

    @property
    def numbers(self) -> range:
        """The NFQUEUE numbers the workers bind: num .. num+workers-1."""
        return range(self.num, self.num + self.workers)


class NetworkConfig(Spec):
    wan: Annotated[tuple[InterfaceName, ...], ARRAY] = ("eth0",)
    # the address space behind the gateway (the subscribers' side): what `portguard replay`
    # takes the direction of a captured connection from; the daemon itself uses `wan`
    internal: Annotated[tuple[Cidr, ...], ARRAY] = ()

    @property
    def internal_networks(self) -> tuple[Network, ...]:
        return tuple(parse_network(text) for text in self.internal)


class HookConfig(Spec):
    """The ``[hook]`` table (the backends' ``HookSpec`` is built from it and ``[queue]`` by
    portguard.service.hookspec)."""

    backend: Backend = "auto"
    ports: Annotated[tuple[Port, ...], ARRAY] = (25, 465, 587)
    chains: Annotated[tuple[Chain, ...], ARRAY] = ("forward",)
    keep_on_stop: bool = False  # SIGTERM leaves the hooks (fail_mode "closed" only)


class RulesConfig(Spec):
    paths: Annotated[tuple[FilePath, ...], ARRAY] = (DEFAULT_RULES_PATH,)
    reevaluate: bool = False  # after a reload, end allowed connections the new policy denies
    # seconds between reloads that re-resolve the host names of the rule files (only when some
    # set names hosts); 0 = never
    resolve_interval: Annotated[int, within(0, MAX_RESOLVE_INTERVAL)] = DEFAULT_RESOLVE_INTERVAL


class DaemonConfig(Spec):
    control_socket: FilePath = DEFAULT_CONTROL_SOCKET  # `portguard reload` talks to the daemon
    state_dir: FilePath = DEFAULT_STATE_DIR  # kept across restarts: last good host resolution


class MetricsConfig(Spec):
    """The Prometheus endpoint: ``listen = "127.0.0.1:9477"``; None (no [metrics]) = off."""

    listen: ListenAddress | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, an IPv6 host without brackets; None when off."""
        match = LISTEN_ADDRESS.match(self.listen or "")
        if match is None:
            return None
        return match["host"].strip("[]"), int(match["port"])


class Output(Spec):
    """A decision-log destination. ``path`` for type file, ``address`` for type syslog."""

    type: OutputType
    path: FilePath | None = None
    address: str | None = None  # "udp://host:port", "tcp://host:port" or "tls://host:port"
    format: LogFormat = "ecs"  # how its events are written: ECS JSON, OCSF JSON or CEF
    level: LogLevel = "info"  # the least severe event it takes
    # events that may wait for it; beyond: dropped and counted
    buffer: Annotated[int, within(1, MAX_BUFFER)] = DEFAULT_BUFFER
    prefix: Prefix = "auto"  # stdout: journald's <N> priority prefix ("auto": under journald)
    # file: MiB of the file's end left in the page cache; older lines, once on disk, are
    # dropped from it (0: the kernel decides)
    page_cache: Annotated[int, within(0, MAX_PAGE_CACHE)] = DEFAULT_PAGE_CACHE
    ca: FilePath | None = None  # tls: CA bundle that verifies the collector (default: system's)
    cert: FilePath | None = None  # tls: client certificate (mutual TLS), with key
    key: FilePath | None = None
    server_name: Text | None = None  # tls: name checked in the certificate (default: host)

    @property
    def endpoint(self) -> tuple[str, str, int]:
        """A syslog output's (transport, host, port); IPv6 hosts without brackets."""
        match = SYSLOG_ADDRESS.match(self.address or "")
        if match is None:
            raise ValueError(f"output {self.type} has no syslog address")
        return match["proto"], match["host"].strip("[]"), int(match["port"])


class LogConfig(Spec):
    outputs: Annotated[tuple[Output, ...], ARRAY] = (Output(type="stdout"),)
    # seconds identical denies are counted, not logged (0 = off)
    flood_window: Annotated[int, within(0, 86400)] = 60
    flow_end: bool = True  # a flow-end event (duration, packets, bytes) per allowed connection


class Config(Spec):
    """The daemon config, every table of the file. ``path`` is the file it was read from (no
    key of it): relative paths in the file were resolved against its directory. Made by
    `parse_config` or `Config.for_file` (validation with a FileContext), never bare."""

    queue: QueueConfig = QueueConfig()
    network: NetworkConfig = NetworkConfig()
    hook: HookConfig = HookConfig()
    rules: RulesConfig = RulesConfig()
    log: LogConfig = LogConfig()
    daemon: DaemonConfig = DaemonConfig()
    metrics: MetricsConfig = MetricsConfig()
    _path: Path = PrivateAttr()

    @classmethod
    def for_file(cls, path: Path, **tables: Any) -> Config:
        """The config of ``tables`` (models or the file's data) as if read from ``path``."""
        return cls.model_validate(tables, context=FileContext(path))

    def model_post_init(self, context: Any, /) -> None:
        if isinstance(context, FileContext):  # read from a file (parse_config, for_file)
            self._path = context.path

    @property
    def path(self) -> Path:
        return self._path


# --- reading the config --------------------------------------------------------------------


def parse_config(text: str, path: Path) -> Config:
    """Validate config text; ``path`` names the file in messages and anchors relative paths."""
    source = parse_toml(path, text)
    if isinstance(source, Problem):
        raise ConfigError([source])
    config = validate(source, Config, FileContext(path))
    problems = [source.problem(key, message) for key, message in checks(source.data)]
    if isinstance(config, list) or problems:
        raise ConfigError([*problems, *(config if isinstance(config, list) else [])])
    return config


MAX_CONFIG_FILE = MIB  # bytes: the config is a page or two


def load_config(path: Path) -> Config:
    """Read and validate the config file at ``path``; any unexpected failure is a ConfigError
    naming the file, never a traceback."""
    try:
        text = read_text(path, MAX_CONFIG_FILE)
    except OSError as error:
        raise ConfigError([Problem(path, None, f"cannot read config: {_reason(error)}")]) from None
    except TextError as error:
        raise ConfigError([error.problem(path)]) from None
    try:
        return parse_config(text, path)
    except ConfigError:
        raise
    except Exception as error:  # the last resort
        raise ConfigError([unexpected(path, error)]) from error


def config_problem(path: Path, key: KeyPath, message: str) -> Problem:
    """A Problem at ``key`` of the config file at ``path`` (for checks made after loading, such
    as whether a WAN interface exists); without a line when the file cannot be read again."""
    try:
        source = parse_toml(path, read_text(path, MAX_CONFIG_FILE))
    except (OSError, TextError):
        return Problem(path, None, message)
    return source if isinstance(source, Problem) else source.problem(key, message)


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error)
