"""The demo's second act: a spambot on the subscriber line, caught, quarantined and released.

The demo's daemon runs the shipped rules plus DETECTOR (`[detect.fanout]`: 10 distinct port-25
servers within 10 minutes). The "bot" (a short Python loop in the subscriber namespace, bound to
the subscriber's address) tries port 25 on 12 servers; the shipped rules refuse each attempt;
the detector raises one alert and quarantines the subscriber, whose mail through the ISP's
smarthost (delivered in case 2) is then refused by `quarantine:fanout`; `portguard quarantine
list` shows it, `portguard quarantine release` lifts it and the smarthost takes the mail again.
Once the daemon has stopped (closing its flood-control windows), `portguard report` on the
decision log ranks the bot first: the abuse desk's view.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lab import addresses as a
from lab.cases import field
from lab.daemon import LabDaemon
from lab.peers import python_env
from lab.topology import Lab

DISTINCT = 10
TARGETS = [f"198.51.100.{100 + n}" for n in range(DISTINCT + 2)]  # routed to the internet side


def detector(distinct: int, quarantine: str) -> str:
    """A `[detect.fanout]` table quarantining a source that tries `distinct` port-25 servers."""
    return f"""[detect.fanout]
dport = [25]
distinct = {distinct}
window = "10m"
action = "quarantine"
quarantine = "{quarantine}"
quarantine_ports = [25, 465, 587]
"""


# the demo's detector (not in the shipped rules): see docs/rules.md, "Detection"
DETECTOR = detector(DISTINCT, "1h")

BOT = """
import socket, sys
for target in sys.argv[2:]:
    with socket.socket() as sock:
        sock.settimeout(2)
        sock.bind((sys.argv[1], 0))
        try:
            sock.connect((target, 25))
        except OSError:
            pass
"""
LIVENESS = 10.0  # seconds an event may take to reach the log (a bound, not a speed)


def detector_rules(directory: Path) -> Path:
    """A rule folder holding only the demo's detector (given after the shipped rules)."""
    folder = directory / "demo-rules"
    folder.mkdir(exist_ok=True)
    (folder / "50-demo-detect.toml").write_text(DETECTOR)
    return folder


def say(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def wait_for(found: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + LIVENESS
    while not (result := found()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def with_action(daemon: LabDaemon, action: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if field(e, "event.action") == action]


def portguard(lab: Lab, daemon: LabDaemon, *args: str) -> str:
    """A portguard command in the gateway, its output (stdout, else stderr)."""
    argv = lab.python("portguard", *args)
    done = lab.run("gw", argv, capture_output=True, text=True, timeout=60, env=python_env())
    return str(done.stdout or done.stderr).rstrip()


def indented(out: TextIO, text: str) -> None:
    for line in text.splitlines():
        say(out, f"    {line}")


def catch_a_bot(lab: Lab, daemon: LabDaemon, out: TextIO) -> bool:
    """The second act; True when every step went as expected."""
    config = ["--config", str(daemon.config)]
    say(out, f"\na bot on the subscriber line tries port 25 on {len(TARGETS)} servers "
             f"({TARGETS[0]} .. {TARGETS[-1]}):")  # fmt: skip
    lab.run("sub", [sys.executable, "-c", BOT, a.SUBSCRIBER.v4, *TARGETS], timeout=120,
            env=python_env(), check=False, stdout=subprocess.DEVNULL)  # fmt: skip
    alerts = wait_for(lambda: with_action(daemon, "fanout-detected"))
    for alert in alerts:
        detection = field(alert, "portguard.detection") or {}
        say(out, f"  alert {field(alert, 'rule.id')}: {field(alert, 'source.ip')} tried "
                 f"{detection.get('distinct')} distinct servers "
                 f"({detection.get('attempts')} attempts)")  # fmt: skip
    added = wait_for(lambda: with_action(daemon, "quarantine-added"))
    for event in added:
        say(out, f"  {field(event, 'message') or 'quarantine-added'}")
    refused = lab.send_mail("sub", a.SMARTHOST.v4, a.PORT_SMTP).outcome
    say(out, f"  subscriber -> ISP smarthost while quarantined: {refused}")
    say(out, "  portguard quarantine list:")
    indented(out, portguard(lab, daemon, "quarantine", "list", *config))
    say(out, f"  portguard quarantine release {a.SUBSCRIBER.v4}:")
    indented(out, portguard(lab, daemon, "quarantine", "release", a.SUBSCRIBER.v4, *config))
    delivered = lab.send_mail("sub", a.SMARTHOST.v4, a.PORT_SMTP).outcome
    say(out, f"  subscriber -> ISP smarthost after the release: {delivered}")
    return len(alerts) == 1 and bool(added) and refused == "refused" and delivered == "delivered"


def abuse_report(lab: Lab, daemon: LabDaemon, out: TextIO) -> None:
    """The abuse desk's daily list, from the decision log alone (no daemon needed)."""
    say(out, f"\nportguard report --log {daemon.events_path.name} (the abuse desk's list):")
    indented(out, portguard(lab, daemon, "report", "--log", str(daemon.events_path), "--top",
                            "3"))  # fmt: skip
