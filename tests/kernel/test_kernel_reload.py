"""A reload with `reevaluate = true` on the stock kernel: allowed connections that the new policy
denies are ended (their connmark rewritten, so the nftables chain resets them), others survive,
and new connections follow the new policy."""

from __future__ import annotations

import signal
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kernel_lab import events, lifecycle, send, threads_in, wait_for

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_leftover
from lab.sessions import session

RELAY = f'[[rule]]\nid = "relay"\ndst = ["{a.SMARTHOST.v4}", "{a.SMARTHOST.v6}"]\ndport = [25]\n'
DIRECT = f'[[rule]]\nid = "{{id}}"\ndst = ["{a.MX.v4}", "{a.MX.v6}"]\ndport = [25]\n'
BOTH = RELAY + 'action = "allow"\n' + DIRECT.format(id="direct") + 'action = "allow"\n'
ONLY_RELAY = (
    RELAY + 'action = "allow"\n' + DIRECT.format(id="direct-closed") + 'action = "reject"\n'
)
SESSIONS = 2
SECONDS = 20.0  # long enough for a reload under TCG; a reset ends a session at once


def sessions(pool: ThreadPoolExecutor, to: str, out: list[dict[str, Any]]) -> list[Future[None]]:
    """SESSIONS SMTP sessions (NOOP every 0.2 s) in the pool's threads."""
    return [pool.submit(session, to, 25, SECONDS, 0.2, out) for _ in range(SESSIONS)]


def reload_while_connected(daemon: LabDaemon, rules: Path) -> None:
    wait_for("sessions up", lambda: len(events(daemon, "portguard.decision")) >= 2 * SESSIONS)
    time.sleep(1)
    rules.write_text(ONLY_RELAY)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("reload", lambda: lifecycle(daemon, "reload"))


def test_a_reload_with_reevaluate_ends_the_newly_denied_connections(lab: Lab) -> None:
    rules = Path(tempfile.mkdtemp(dir=lab.workdir)) / "rules.toml"
    rules.write_text(BOTH)
    daemon = LabDaemon(lab, rules=[rules], reevaluate=True)
    daemon.start(timeout=120)
    kept: list[dict[str, Any]] = []
    doomed: list[dict[str, Any]] = []
    try:
        with threads_in(lab, "sub", 2 * SESSIONS) as pool:
            futures = sessions(pool, a.SMARTHOST.v6, kept) + sessions(pool, a.MX.v4, doomed)
            reload_while_connected(daemon, rules)
            for future in futures:
                future.result(timeout=SECONDS + 60)
        assert len(doomed) == SESSIONS and not any(r["ok"] for r in doomed), doomed
        assert all(r["after_s"] < SECONDS for r in doomed), doomed  # ended, not timed out
        assert all("reset" in r["error"].lower() for r in doomed), doomed
        assert kept == [{"ok": True}] * SESSIONS
        ended = [e for e in events(daemon, "portguard.decision") if "end" in e["event"]["type"]]
        assert {e["rule"]["id"] for e in ended} == {"direct-closed"}
        assert {e["destination"]["ip"] for e in ended} <= {a.MX.v4, a.MX.v6}
        # the suite's lab is shared: earlier allowed connections to the MX (still in conntrack,
        # TIME_WAIT) are ended too; the sessions are the subscriber's
        assert sum(e["source"]["ip"] == a.SUBSCRIBER.v4 for e in ended) == SESSIONS, ended
        assert send(lab, "sub", a.MX.v6, 25, timeout=4).outcome == "refused"  # the new policy
    finally:
        assert daemon.stop() == 0, daemon.stderr_tail()
    assert not hooks_leftover(lab)
