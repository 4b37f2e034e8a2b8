"""The one-shot commands behind the CLI: check, reload, status, explain, hook."""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from pathlib import Path

from portguard.config.model import Config
from portguard.core.errors import Problem, SourceError, unexpected
from portguard.core.policy import format_explanation
from portguard.core.policy.model import Connection, Direction
from portguard.core.policy.report import CheckReport
from portguard.io import interfaces
from portguard.io.hooks.backend import HookBackend, HookError
from portguard.io.hooks.factory import cleanup_leftovers, select_backend
from portguard.io.policyfiles import load_ruleset
from portguard.service.hookspec import hook_spec

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check(config_path: Path, output_format: str = "text", strict: bool = False) -> int:
    """Validate the config and every rule file; print every error, or the warnings and a
    summary. Exit 0 valid, 1 errors, 2 warnings under ``strict``."""
    try:
        report = _check_report(config_path)
    except Exception as error:  # the last resort: a message naming the file, never a traceback
        report = CheckReport.failed(config_path, SourceError([unexpected(config_path, error)]))
    if output_format == "json":
        print(json.dumps(report.as_json(strict), indent=2))
    else:
        out, err = report.text()
        for line in out:
            print(line)
        for line in err:
            print(line, file=sys.stderr)
    return report.exit_code(strict)


def _check_report(config_path: Path) -> CheckReport:
    from portguard.config.model import load_config
    from portguard.core.policy.lint import lint
    from portguard.service.policystate import saved_resolution

    try:
        config = load_config(config_path)
        output_errors = output_problems(config)
        if output_errors:
            raise SourceError(output_errors)
        # as the daemon starts: a host name that fails transiently (a DNS outage at boot)
        # keeps its last good addresses from the state directory, with a warning
        ruleset = load_ruleset(
            config.rules.paths, previous=saved_resolution(config.daemon.state_dir)
        )
    except SourceError as error:
        return CheckReport.failed(config_path, error)
    warnings = [*wan_problems(config), *lint(ruleset, config.hook.ports)]
    return CheckReport.loaded(config_path, ruleset, warnings)


def wan_problems(config: Config) -> list[Problem]:
    """A warning for each WAN interface this host does not have (yet): while it is missing,
    the daemon sees no connection as outbound or inbound (only `internal`)."""
    from portguard.config.model import config_problem

    wan = list(config.network.wan)
    problems = []
    for name in interfaces.missing_interfaces(wan):
        message = (f'wan: interface "{name}" does not exist on this host (yet); connections '
                   "through it are not seen as outbound or inbound until it does")  # fmt: skip
        problems.append(config_problem(config.path, ("network", "wan", wan.index(name)), message))
    return problems


def output_problems(config: Config) -> list[Problem]:
    """File outputs the daemon would refuse: a symbolic link at the path."""
    from portguard.config.model import config_problem

    problems = []
    for index, output in enumerate(config.log.outputs):
        if output.type == "file" and output.path is not None and output.path.is_symlink():
            message = (f"path: {output.path} is a symbolic link; portguard does not write "
                       "through one (point the path at the real file)")  # fmt: skip
            problems.append(config_problem(config.path, ("log", "outputs", index, "path"), message))
    return problems


def reload(config: Config) -> int:
    """Ask the running daemon to reload: 0 reloaded, 1 refused (errors), 3 no daemon."""
    from portguard.service.control import request

    path = config.daemon.control_socket
    try:
        answer = request(path, "reload")
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"portguard: no daemon listens on {path}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as error:  # permission, timeout, a garbled answer
        print(f"portguard: talking to the daemon on {path} failed: {error}", file=sys.stderr)
        return 3
    if answer.get("ok"):
        print(f"reloaded: policy {answer.get('policy_version')}, {answer.get('rules')} rules")
        return 0
    for message in answer.get("errors", []):
        print(message, file=sys.stderr)
    print(f"portguard: reload refused; policy {answer.get('policy_version')} stays in force",
          file=sys.stderr)  # fmt: skip
    return 1


STATUS_TIMEOUT = 10.0  # seconds: the daemon answers from counters, at once unless it hangs


def status(config: Config, as_json: bool = False) -> int:
    """Print the running daemon's status document: 0 answered, 1 not reachable or refused."""
    from portguard.service.control import request
    from portguard.service.status import fill_queue_counters
    from portguard.service.statustext import format_status

    path = config.daemon.control_socket
    try:
        answer = request(path, "status", timeout=STATUS_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"portguard: no daemon listens on {path} (is portguard running?)", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:  # permission, timeout, a garbled answer
        print(f"portguard: talking to the daemon on {path} failed: {error}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        for message in answer.get("errors", ["the daemon refused the status request"]):
            print(f"portguard: {message}", file=sys.stderr)
        return 1
    answer = fill_queue_counters(answer)  # an unprivileged daemon cannot read them
    print(json.dumps(answer, indent=2) if as_json else "\n".join(format_status(answer)))
    return 0


def explain(
    config: Config, src: Address, dst: Address, dport: int, direction: str, every: bool = False
) -> int:
    if src.version != dst.version:
        print("--src and --dst must be the same IP version")
        return 2
    ruleset = load_ruleset(config.rules.paths)
    connection = Connection(src.version, int(src), int(dst), dport, Direction(direction))
    for line in quarantine_lines(config, src.version, int(src), dport):
        print(line)
    print(format_explanation(ruleset.explain(connection, every), ruleset.resolved))
    return 0


def quarantine_lines(config: Config, version: int, src: int, dport: int) -> list[str]:
    """A quarantine decides before the rules: say so when the source is quarantined, or when
    the quarantine cannot be read (the offline explain reads the state directory)."""
    from portguard.service.quarantinestate import saved_quarantine

    now = time.time()
    table, unreadable = saved_quarantine(config.daemon.state_dir, now)
    refused = table.refusal(version, src, dport, now)
    if refused is not None:
        return [f"decided by {refused.rule_id} (reject): {refused.reason}",
                "the rules below decide once the quarantine ends:"]  # fmt: skip
    return [f"quarantine unknown: cannot read {why}; the rules below decide unless the source "
            "is quarantined" for why in unreadable]  # fmt: skip


def hook(config: Config, action: str) -> int:
    """install / remove / status. Remove and status look at both backends: removal leaves
    nothing whichever backend put it there, and status shows what is really installed."""
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
