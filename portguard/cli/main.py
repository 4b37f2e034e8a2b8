"""Command line: parses arguments and calls the part that does the work."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from portguard import __version__
from portguard.core.errors import SourceError

DEFAULT_CONFIG = Path("/etc/portguard/portguard.toml")
DIRECTIONS = ("outbound", "inbound", "internal", "external")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portguard", description="SMTP-port policy gateway")
    parser.add_argument("--version", action="version", version=f"portguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the daemon in the foreground"),
        ("reload", "make the running daemon load the rule files (prints the check result)"),
    ):
        _with_config(commands.add_parser(name, help=text))
    status = _with_config(commands.add_parser("status", help="the running daemon's counters"))
    status.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    check = _with_config(commands.add_parser("check", help="validate the config and rules"))
    check.add_argument("--format", choices=("text", "json"), default="text", dest="output_format")
    check.add_argument("--strict", action="store_true", help="exit 2 when there are warnings")
    explain = _with_config(commands.add_parser("explain", help="which rule decides a connection"))
    explain.add_argument("--src", required=True, type=ipaddress.ip_address)
    explain.add_argument("--dst", required=True, type=ipaddress.ip_address)
    explain.add_argument("--dport", required=True, type=int)
    explain.add_argument("--direction", default="outbound", choices=DIRECTIONS)
    explain.add_argument("--all", action="store_true", dest="every", help="every matching rule")
    hook = _with_config(commands.add_parser("hook", help="install, remove or show the hooks"))
    hook.add_argument("action", choices=("install", "remove", "status"))
    _replay_parser(commands.add_parser("replay", help="decide a capture's SYNs by the policy"))
    _quarantine_parser(commands.add_parser("quarantine", help="the running daemon's quarantine"))
    _report_parser(commands.add_parser("report", help="rank sources by denied SMTP attempts"))
    return parser


def _report_parser(report: argparse.ArgumentParser) -> None:
    report.add_argument(
        "--log",
        nargs="+",
        action="extend",
        type=Path,
        required=True,
        metavar="FILE",
        dest="logs",
        help="decision logs (ECS JSON lines; rotated and .gz files too)",
    )
    report.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help="only events of the last DURATION before now (24h, 90m, 7d)",
    )
    report.add_argument(
        "--top",
        type=_count,
        default=20,
        metavar="N",
        help="the N sources with most attempts (default 20; 0: all)",
    )
    report.add_argument(
        "--ports",
        type=_ports,
        default="25,465,587",
        metavar="PORTS",
        help="the ports whose denied attempts count (default 25,465,587)",
    )
    report.add_argument("--format", choices=("table", "json"), default="table",
                        dest="output_format")  # fmt: skip


def _duration(text: str) -> int:
    from portguard.core.abuse import parse_since

    try:
        return parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _ports(text: str) -> list[int]:
    from portguard.cli.quarantine import parse_ports

    try:
        return parse_ports(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _quarantine_parser(quarantine: argparse.ArgumentParser) -> None:
    _with_config(quarantine)
    quarantine.add_argument("action", choices=("list", "add", "release"))
    quarantine.add_argument("address", nargs="?", metavar="ADDRESS", help="IPv4, or IPv6 (its /64)")
    quarantine.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 30m, 1h, 2d")
    quarantine.add_argument("--ports", type=_ports, help="default 25,465,587")
    quarantine.add_argument("--json", action="store_true", dest="as_json", help="print JSON")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (0 or more)")
    return int(text)


def _replay_parser(replay: argparse.ArgumentParser) -> None:
    _with_config(replay)
    replay.add_argument("capture", type=Path, metavar="CAPTURE", help="a pcap or pcapng file")
    replay.add_argument(
        "--inside",
        action="append",
        default=[],
        metavar="CIDR",
        help="an address block behind the gateway (repeatable; default: [network] internal)",
    )
    replay.add_argument(
        "--compare",
        type=Path,
        metavar="CONFIG2",
        help="print the connections CONFIG2 decides differently (exit 3)",
    )
    replay.add_argument(
        "--format", choices=("table", "json"), default="table", dest="output_format"
    )
    replay.add_argument("--progress", action="store_true", help="progress on stderr every 5 s")


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="portguard.toml")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # logrotate's postrotate signals every process of the unit: SIGUSR1 must never kill one
    # (the daemon handles it once it runs; a `check` or `reload` just ignores it)
    for early in (signal.SIGUSR1, signal.SIGHUP):  # until the daemon's own handlers are in
        signal.signal(early, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SourceError as error:
        for message in error.messages:
            print(message, file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    from portguard.cli import commands
    from portguard.config.model import load_config

    if args.command == "check":  # loads the config itself: its errors in --format json too
        return commands.check(args.config, args.output_format, args.strict)
    if args.command == "replay":  # loads its configs itself; imports scapy only now
        from portguard.cli.replay import ReplayArgs, replay

        return replay(ReplayArgs(args.config, args.capture, args.inside, args.compare,
                                 args.output_format, args.progress))  # fmt: skip
    if args.command == "report":  # reads logs only: no config, no daemon
        from portguard.cli.report import ReportArgs, report

        return report(ReportArgs(args.logs, args.since, args.top, args.output_format,
                                 args.ports))  # fmt: skip
    config = load_config(args.config)
    if args.command == "run":
        from portguard.service.daemon import run

        return run(config)
    if args.command == "reload":
        return commands.reload(config)
    if args.command == "status":
        return commands.status(config, args.as_json)
    if args.command == "quarantine":
        from portguard.cli.quarantine import quarantine

        return quarantine(config, args.action, args.address, args.duration, args.ports,
                          args.as_json)  # fmt: skip
    if args.command == "explain":
        return commands.explain(config, args.src, args.dst, args.dport, args.direction, args.every)
    return commands.hook(config, args.action)


if __name__ == "__main__":
    sys.exit(main())
