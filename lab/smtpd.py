"""A lab SMTP server: accepts any mail on several address:port pairs and logs each message.

    python -m lab.smtpd --listen 198.51.100.25:25 --listen [2001:db8:25::25]:465 \
        --tls-implicit-port 465 --starttls --cert C --key K --log FILE

Port numbers given with --tls-implicit-port speak TLS from the first byte (RFC 8314); with
--starttls the other listeners offer STARTTLS (RFC 3207). No message size limit. One JSON line
per received message goes to the log file; `READY` goes to stdout once every listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from lab.tls import CertPair, server_context


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


def parse_listen(text: str) -> Listen:
    """`ip:port` or `[ipv6]:port` -> Listen; raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected ADDR:PORT, got {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    ipaddress.ip_address(host)
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return Listen(host, number)


def format_endpoint(sockname: Any) -> str:
    """A socket name (tuple) as `ip:port`, IPv6 in brackets."""
    host, port = str(sockname[0]), int(sockname[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Recorder:
    """aiosmtpd handler: accept everything, append one JSON line per message to the log."""

    def __init__(self, log_path: Path) -> None:
        self._log = log_path.open("a", encoding="utf-8")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        transport = server.transport
        local = transport.get_extra_info("sockname")
        record = {
            "peer": format_endpoint(session.peer),
            "local": format_endpoint(local),
            "local_ip": str(local[0]),
            "local_port": int(local[1]),
            "tls": transport.get_extra_info("ssl_object") is not None,
            "mail_from": envelope.mail_from,
            "rcpt": list(envelope.rcpt_tos),
            "size": len(envelope.original_content or b""),
        }
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        return "250 OK queued"

    def close(self) -> None:
        self._log.close()


def protocol_factory(
    handler: Recorder, hostname: str, starttls: ssl.SSLContext | None
) -> Callable[[], SMTP]:
    def build() -> SMTP:
        return SMTP(
            handler,
            hostname=hostname,
            data_size_limit=None,  # no limit: 100 MB messages must pass
            tls_context=starttls,
            require_starttls=False,
            timeout=120,
        )

    return build


async def serve(args: argparse.Namespace) -> None:
    context = server_context(CertPair(args.cert, args.key)) if args.cert else None
    handler = Recorder(args.log)
    loop = asyncio.get_running_loop()
    servers = []
    for listen in args.listen:
        implicit = listen.port in args.tls_implicit_port
        starttls = context if args.starttls and not implicit else None
        factory = protocol_factory(handler, args.hostname, starttls)
        tls = context if implicit else None
        servers.append(await loop.create_server(factory, listen.host, listen.port, ssl=tls))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("READY", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    handler.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.smtpd", description=__doc__)
    parser.add_argument("--listen", type=parse_listen, action="append", required=True)
    parser.add_argument("--tls-implicit-port", type=int, action="append", default=[])
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--hostname", default="mail.lab.portguard.test")
    args = parser.parse_args(argv)
    if (args.starttls or args.tls_implicit_port) and not (args.cert and args.key):
        parser.error("--starttls and --tls-implicit-port need --cert and --key")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
