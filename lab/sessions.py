"""Many long SMTP sessions at once, for reload-under-load and re-evaluation tests.

    python -m lab.sessions --to ADDR --port 25 --count 50 --seconds 8

Each session connects, says EHLO, then sends NOOP every `--interval` seconds until
`--seconds` have passed, and QUITs. One JSON line reports how many sessions stayed up and
what happened to the others (reset, timeout, error) and when.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import threading
import time
from typing import Any


def session(to: str, port: int, seconds: float, interval: float, out: list[dict[str, Any]]) -> None:
    started = time.monotonic()
    try:
        with smtplib.SMTP(to, port, timeout=10) as smtp:
            smtp.ehlo("sessions.lab.example")
            while time.monotonic() - started < seconds:
                code, _ = smtp.noop()
                if code != 250:
                    raise smtplib.SMTPResponseException(code, b"NOOP refused")
                time.sleep(interval)
        out.append({"ok": True})
    except (OSError, smtplib.SMTPException) as error:
        out.append({"ok": False, "error": f"{type(error).__name__}: {error}",
                    "after_s": round(time.monotonic() - started, 3)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", required=True)
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=session, args=(args.to, args.port, args.seconds, args.interval, results)
        )
        for _ in range(args.count)
    ]
    for thread in threads:
        thread.start()
    print("STARTED", flush=True)
    for thread in threads:
        thread.join()
    failed = [r for r in results if not r["ok"]]
    print(json.dumps({"ok": len(results) - len(failed), "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
