"""Checks of the daemon config across values, on the raw TOML data (so they run even when
other keys are wrong), and the address forms the config takes (portguard.config.model uses them).

Each check yields ``(key path, message)``; portguard.config.model turns them into ``path:line``
problems next to the shape errors of its schema.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

from portguard.core.sourcemap import KeyPath

MAX_WORKERS = 64
MAX_QUEUE_NUM = 65535
SYSLOG_ADDRESS = re.compile(
    r"^(?P<proto>udp|tcp|tls)://(?P<host>\[[^\]]*\]|[^:/\[\]]+):(?P<port>\d+)$"
)
LISTEN_ADDRESS = re.compile(r"^(?P<host>\[[^\]]*\]|[^:\[\]]+):(?P<port>\d+)$")
_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$"
)


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
    """Options that only some outputs take: prefix (stdout), page_cache (file), TLS files
    (tls:// syslog)."""
    for name, only in (("prefix", "stdout"), ("page_cache", "file")):
        if name in output and kind != only:
            yield (*key, name), f"outputs: '{name}' does not apply to type \"{kind}\""
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
    match = SYSLOG_ADDRESS.match(address)
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
    match = LISTEN_ADDRESS.match(address)
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


def checks(data: dict[str, Any]) -> Iterator[tuple[KeyPath, str]]:
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
