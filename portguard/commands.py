"""The one-shot commands behind the CLI: check, explain, hook."""

from __future__ import annotations

import ipaddress

from portguard.config import Config
from portguard.io.hook import HookError, select_backend
from portguard.policy import format_explanation, load_ruleset
from portguard.policy.model import Connection, Direction

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check(config: Config) -> int:
    """Exit 0 when the config and every rule file load; errors raise SourceError (exit 1)."""
    ruleset = load_ruleset(config.rules.paths)
    files = ", ".join(str(path) for path in ruleset.sources)
    print(f"{config.path}: ok; {len(ruleset.rules)} rules from {files}; "
          f"policy version {ruleset.version}")
    return 0


def explain(config: Config, src: Address, dst: Address, dport: int, direction: str) -> int:
    if src.version != dst.version:
        print("--src and --dst must be the same IP version")
        return 2
    ruleset = load_ruleset(config.rules.paths)
    connection = Connection(src.version, int(src), int(dst), dport, Direction(direction))
    print(format_explanation(ruleset.explain(connection)))
    return 0


def hook(config: Config, action: str) -> int:
    from portguard.daemon import hook_spec

    backend = select_backend(config.hook.backend)
    try:
        if action == "install":
            backend.install(hook_spec(config))
        elif action == "remove":
            backend.remove()
        status = backend.status()
    except HookError as error:
        print(f"portguard: {error}")
        return 1
    print(status.detail)
    return 0 if status.installed or action == "remove" else 3
