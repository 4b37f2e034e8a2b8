"""The shape of the daemon config file: every key with its type, default and limits.

`ConfigSpec` is what `portguard.config.model` validates the TOML data against (an unknown key is an
error); the values here are checked one by one, the checks across keys are in checks.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from portguard.config.checks import MAX_QUEUE_NUM, MAX_WORKERS, listen_address_problem
from portguard.core.tomlsource import Spec

FailMode = Literal["open", "closed"]
Backend = Literal["auto", "nftables", "iptables"]
Chain = Literal["forward", "output"]
OutputType = Literal["stdout", "file", "syslog"]
LogFormat = Literal["ecs", "ocsf", "cef"]  # log/formats.py
LogLevel = Literal["debug", "info", "notice", "warning", "error"]  # log/sinks.py
Prefix = Literal["auto", "always", "never"]
DEFAULT_BUFFER = 65536  # events waiting for one output
MAX_BUFFER = 10_000_000

DEFAULT_RULES_PATH = Path("/etc/portguard/rules.d")
DEFAULT_RESOLVE_INTERVAL = 300
MAX_RESOLVE_INTERVAL = 7 * 86400
DEFAULT_CONTROL_SOCKET = Path("/run/portguard/control.sock")
DEFAULT_STATE_DIR = Path("/var/lib/portguard")  # systemd's StateDirectory=portguard
# Postfix's 100 delivery processes at ~0.5 s a delivery open < 200 connections a second
DEFAULT_PER_SOURCE_RATE = 200  # new hooked connections a second from one source
DEFAULT_PER_SOURCE_BURST = 1000
MAX_PER_SOURCE_RATE = 100_000  # io.hooks.backend.MAX_SOURCE_RATE: hashlimit is exact up to here
MAX_PER_SOURCE_BURST = 1_000_000
RATE = re.compile(r"^(?P<count>\d+)/(second|s)$")


def _within(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    return check


def _interface_name(name: str) -> str:
    """What the kernel takes as a device name (dev_valid_name): 1-15 characters, not "." or
    "..", no "/", ":", spaces or control characters."""
    bad = any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
    if not 1 <= len(name) <= 15 or bad or name in (".", ".."):
        raise ValueError(
            f'"{name}" is not an interface name (1-15 characters, no "/", ":" or spaces)'
        )
    return name


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _per_second(text: str) -> str:
    match = RATE.match(text)
    if match is None:
        raise ValueError(f'"{text}" is not a rate per second (e.g. "200/second"; "0/second": off)')
    _within(0, MAX_PER_SOURCE_RATE)(int(match["count"]))
    return text


def _switch(value: object) -> object:
    """``per_source = false`` turns the limit off, ``true`` takes the defaults."""
    if value is False:
        return {"rate": "0/second"}
    return {} if value is True else value


class PerSourceSpec(Spec):
    rate: Annotated[str, AfterValidator(_per_second)] = f"{DEFAULT_PER_SOURCE_RATE}/second"
    burst: Annotated[int, AfterValidator(_within(1, MAX_PER_SOURCE_BURST))] = (
        DEFAULT_PER_SOURCE_BURST
    )
    prefix6: Annotated[int, AfterValidator(_within(1, 128))] = 64


class QueueSpec(Spec):
    num: Annotated[int, AfterValidator(_within(0, MAX_QUEUE_NUM))] = 0
    workers: Annotated[int, AfterValidator(_within(1, MAX_WORKERS))] = 1
    fail_mode: FailMode = "closed"
    max_len: Annotated[int, AfterValidator(_within(1, 2**32 - 1))] = 4096
    per_source: Annotated[PerSourceSpec, BeforeValidator(_switch)] = PerSourceSpec()


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
    state_dir: Annotated[str, AfterValidator(_not_blank)] = str(DEFAULT_STATE_DIR)


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
