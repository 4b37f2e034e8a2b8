"""The daemon config (``/etc/portguard/portguard.toml``): parse, validate, resolve paths.

Every key of the contract in DESIGN.md, nothing else: an unknown key is an error. Every error is
reported at once as ``path:line: message`` (ConfigError.messages). Relative paths in the file
(rule paths, a log file) resolve against the directory of the config file. The file's shape
(keys, types, defaults, limits) is `schema.py`; checks across keys are `checks.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from portguard.config.checks import (
    LISTEN_ADDRESS,
    SYSLOG_ADDRESS,
    checks,
    listen_address_problem,
    syslog_address_problem,
)
from portguard.config.schema import (
    DEFAULT_BUFFER,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_PER_SOURCE_BURST,
    DEFAULT_PER_SOURCE_RATE,
    DEFAULT_RESOLVE_INTERVAL,
    DEFAULT_RULES_PATH,
    DEFAULT_STATE_DIR,
    RATE,
    Backend,
    Chain,
    ConfigSpec,
    FailMode,
    LogFormat,
    LogLevel,
    OutputSpec,
    OutputType,
    PerSourceSpec,
    Prefix,
)
from portguard.core.errors import ConfigError, Problem, unexpected
from portguard.core.sourcemap import KeyPath
from portguard.core.tomlsource import MIB, TextError, parse_toml, validate
from portguard.io.files import read_text

__all__ = [
    "Config",
    "ConfigError",
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

# --- the resolved config -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PerSourceLimit:
    """The kernel's limit on new hooked connections from one source, before the queue.

    One IPv4 address, or one IPv6 prefix of ``prefix6`` bits (a /64 is one subscriber), may
    send ``rate`` SYNs a second to hooked ports, ``burst`` at once; the kernel drops the rest
    (and counts them) before they reach the queue everyone shares. ``rate`` 0 = off.
    """

    rate: int = DEFAULT_PER_SOURCE_RATE
    burst: int = DEFAULT_PER_SOURCE_BURST
    prefix6: int = 64

    @property
    def enabled(self) -> bool:
        return self.rate > 0


@dataclass(frozen=True, slots=True)
class QueueConfig:
    num: int = 0
    workers: int = 1
    fail_mode: FailMode = "closed"
    max_len: int = 4096
    per_source: PerSourceLimit = field(default_factory=PerSourceLimit)

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
    state_dir: Path = DEFAULT_STATE_DIR  # kept across restarts: last good host resolution


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint: ``listen = "127.0.0.1:9477"``; None (no [metrics]) = off."""

    listen: str | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, an IPv6 host without brackets; None when off."""
        match = LISTEN_ADDRESS.match(self.listen or "")
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
        match = SYSLOG_ADDRESS.match(self.address or "")
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


# --- building the config -------------------------------------------------------------------


def _resolve(base: Path, text: str) -> Path:
    return base / Path(text).expanduser()


def _build(spec: ConfigSpec, path: Path) -> Config:
    base = path.absolute().parent
    outputs = tuple(_output(o, base) for o in spec.log.outputs)
    return Config(
        path=path,
        queue=QueueConfig(
            spec.queue.num,
            spec.queue.workers,
            spec.queue.fail_mode,
            spec.queue.max_len,
            _per_source(spec.queue.per_source),
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
        daemon=DaemonConfig(
            _resolve(base, spec.daemon.control_socket), _resolve(base, spec.daemon.state_dir)
        ),
        metrics=MetricsConfig(spec.metrics.listen),
    )


def _per_source(spec: PerSourceSpec) -> PerSourceLimit:
    match = RATE.match(spec.rate)
    assert match is not None  # validated
    return PerSourceLimit(int(match["count"]), spec.burst, spec.prefix6)


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
    problems = [source.problem(key, message) for key, message in checks(source.data)]
    if isinstance(spec, list) or problems:
        raise ConfigError([*problems, *(spec if isinstance(spec, list) else [])])
    return _build(spec, path)


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
