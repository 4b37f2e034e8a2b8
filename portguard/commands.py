"""The one-shot commands behind the CLI: check, explain, hook."""

from __future__ import annotations

import ipaddress
import sys

from portguard.config import Config
from portguard.io.hook import HookBackend, HookError, cleanup_leftovers, select_backend
from portguard.policy import format_explanation, load_ruleset
from portguard.policy.model import Connection, Direction

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check(config: Config) -> int:
    """Exit 0 when the config and every rule file load; errors raise SourceError (exit 1)."""
    ruleset = load_ruleset(config.rules.paths)
    for rule in ruleset.unhooked(config.hook.ports):
        print(
            f"warning: rule '{rule.id}' ({rule.ruleset}) names no hooked port "
            f"({', '.join(map(str, config.hook.ports))}): it can never match"
        )
    files = ", ".join(str(path) for path in ruleset.sources)
    print(
        f"{config.path}: ok; {len(ruleset.rules)} rules from {files}; "
        f"policy version {ruleset.version}"
    )
    return 0


def reload(config: Config) -> int:
    """Ask the running daemon to reload: 0 reloaded, 1 refused (errors), 3 no daemon."""
    from portguard.control import request

    path = config.daemon.control_socket
    try:
        answer = request(path, "reload")
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"portguard: no daemon listens on {path}", file=sys.stderr)
        return 3
    if answer.get("ok"):
        print(f"reloaded: policy {answer.get('policy_version')}, {answer.get('rules')} rules")
        return 0
    for message in answer.get("errors", []):
        print(message, file=sys.stderr)
    print(f"portguard: reload refused; policy {answer.get('policy_version')} stays in force",
          file=sys.stderr)  # fmt: skip
    return 1


def explain(config: Config, src: Address, dst: Address, dport: int, direction: str) -> int:
    if src.version != dst.version:
        print("--src and --dst must be the same IP version")
        return 2
    ruleset = load_ruleset(config.rules.paths)
    connection = Connection(src.version, int(src), int(dst), dport, Direction(direction))
    print(format_explanation(ruleset.explain(connection)))
    return 0


def hook(config: Config, action: str) -> int:
    """install / remove / status. Remove and status look at both backends: removal leaves
    nothing whichever backend put it there, and status shows what is really installed."""
    from portguard.daemon import hook_spec

    spec = hook_spec(config)
    try:
        chosen = select_backend(config.hook.backend)
        if action == "install":
            chosen.install(spec)
        elif action == "remove":
            cleanup_leftovers()
        statuses = [backend.status(spec) for backend in _all_backends(chosen)]
    except HookError as error:
        print(f"portguard: {error}", file=sys.stderr)
        return 1
    shown = [status for status in statuses if status.installed] or statuses[:1]
    for status in shown:
        print(status.detail.rstrip())
        print(
            f"backend: {status.backend}; installed: {_yes(status.installed)}; "
            f"complete: {_yes(status.complete)}; rule sets: {status.rule_sets}"
        )
    if action == "remove":
        return 1 if any(status.installed for status in statuses) else 0
    return 0 if statuses[0].installed and statuses[0].complete else 3


def _all_backends(chosen: HookBackend) -> list[HookBackend]:
    """The chosen backend first, then the other one."""
    other = "iptables" if chosen.name == "nftables" else "nftables"
    return [chosen, select_backend(other)]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
