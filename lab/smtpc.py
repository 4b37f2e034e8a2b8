"""A lab SMTP client: send one message (or only connect) and report what the client saw.

    python -m lab.smtpc --to 198.51.100.25 --port 25 [--mode plain|starttls|implicit]
        [--size BYTES] [--timeout S] [--source ADDR] [--connect-only]

Prints one JSON line {"outcome", "elapsed_ms", "detail"} and exits 0 (2 on bad arguments).
Outcomes: delivered, connected (--connect-only), refused (ECONNREFUSED: a TCP RST answered the
SYN), reset (the connection was cut after it was set up), timeout (no answer in time: a
dropped SYN), error (anything else, e.g. an SMTP error reply or ICMP unreachable).
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import smtplib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lab.tls import client_context

HELO_NAME = "client.lab.portguard.test"  # explicit: smtplib would otherwise look up the FQDN
MAIL_FROM = "sender@client.lab.portguard.test"
RCPT_TO = "rcpt@mail.lab.portguard.test"
LINE_LEN = 992  # bytes per body line with CRLF (RFC 5321 allows 1000)
LINES_PER_CHUNK = 1024
MODES = ("plain", "starttls", "implicit")


def headers(size: int) -> bytes:
    return (
        f"From: <{MAIL_FROM}>\r\nTo: <{RCPT_TO}>\r\n"
        f"Subject: portguard lab message of {size} bytes\r\n"
        "Message-ID: <lab@client.lab.portguard.test>\r\n\r\n"
    ).encode()


def message_chunks(size: int) -> Iterator[bytes]:
    """The DATA content of a message of `size` bytes (at least the headers), in chunks.

    No line starts with '.', so no dot-stuffing is needed; every line ends with CRLF.
    """
    head = headers(size)
    yield head
    remaining = max(0, size - len(head))
    line = b"x" * (LINE_LEN - 2) + b"\r\n"
    full, rest = divmod(remaining, LINE_LEN)
    if rest == 1 and full:  # a 1-byte line cannot exist: lengthen one full line instead
        full, rest = full - 1, LINE_LEN + 1
    chunk = line * LINES_PER_CHUNK
    for _ in range(full // LINES_PER_CHUNK):
        yield chunk
    yield line * (full % LINES_PER_CHUNK)
    if rest:
        yield b"x" * max(0, rest - 2) + b"\r\n"


def coalesce(chunks: Iterable[bytes], block: int = 1 << 20) -> Iterator[bytes]:
    """Join small chunks into blocks of about `block` bytes: fewer sends, no Nagle stalls."""
    pending: list[bytes] = []
    length = 0
    for chunk in chunks:
        pending.append(chunk)
        length += len(chunk)
        if length >= block:
            yield b"".join(pending)
            pending, length = [], 0
    if pending:
        yield b"".join(pending)


def open_session(args: argparse.Namespace) -> smtplib.SMTP:
    """Connect (TLS from the start in implicit mode), EHLO, and STARTTLS in starttls mode."""
    source = (args.source, 0) if args.source else None
    common: dict[str, Any] = {
        "local_hostname": HELO_NAME,
        "timeout": args.timeout,
        "source_address": source,
    }
    smtp: smtplib.SMTP
    if args.mode == "implicit":
        smtp = smtplib.SMTP_SSL(args.to, args.port, context=client_context(), **common)
    else:
        smtp = smtplib.SMTP(args.to, args.port, **common)
    try:
        smtp.ehlo()
        if args.mode == "starttls":
            smtp.starttls(context=client_context())
            smtp.ehlo()
    except BaseException:
        smtp.close()
        raise
    return smtp


def send_data(smtp: smtplib.SMTP, size: int) -> None:
    """MAIL, RCPT and DATA with the content streamed, never held in memory whole."""
    smtp.mail(MAIL_FROM)
    code, reply = smtp.rcpt(RCPT_TO)
    if code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({RCPT_TO: (code, reply)})
    code, reply = smtp.docmd("DATA")
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    for block in coalesce(itertools.chain(message_chunks(size), [b".\r\n"])):
        smtp.send(block)
    code, reply = smtp.getreply()
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def classify(exc: BaseException) -> str:
    """Map what went wrong to an outcome name."""
    chain = list(exception_chain(exc))
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return "refused"
        if isinstance(item, TimeoutError):
            return "timeout"
        if isinstance(item, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return "reset"
    if any(isinstance(item, smtplib.SMTPServerDisconnected) for item in chain):
        return "reset"
    return "error"


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return f"{errno.errorcode[exc.errno]}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def attempt(args: argparse.Namespace) -> tuple[str, str]:
    """(outcome, detail) of one delivery or connection attempt."""
    server = f"[{args.to}]:{args.port}" if ":" in args.to else f"{args.to}:{args.port}"
    try:
        smtp = open_session(args)
        try:
            if args.connect_only:
                return "connected", f"EHLO answered by {server}"
            send_data(smtp, args.size)
            return "delivered", f"{args.size} bytes accepted by {server}"
        finally:
            quit_quietly(smtp)
    except Exception as exc:
        return classify(exc), describe(exc)


def quit_quietly(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.smtpc", description=__doc__)
    parser.add_argument("--to", required=True, help="server address (IPv4 or IPv6)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="plain")
    parser.add_argument("--size", type=int, default=1000, help="message size in bytes")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per socket operation")
    parser.add_argument("--source", help="bind to this source address")
    parser.add_argument("--connect-only", action="store_true", help="only EHLO and QUIT")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    outcome, detail = attempt(args)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    result = {"outcome": outcome, "elapsed_ms": round(elapsed_ms, 3), "detail": detail}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
