"""The syslog sink against a real rsyslogd from Debian, both inside a throwaway namespace.

rsyslogd (lab.collector) listens on 127.0.0.1:514 (TCP) and :6514 (TLS, a test CA)
in the namespace; the sink runs in a small Python process started in the same namespace, which
takes commands on stdin ("send these events") and answers on stdout (which ones raised, the
sink's on_state calls, how long it took).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netns import Netns, netns_fixture  # noqa: F401 - the netns fixture

from lab.collector import Collector
from lab.pki import Authority, issue, make_ca
from lab.tls import CertPair

TCP, TLS = "tcp://127.0.0.1:514", "tls://127.0.0.1:6514"

SENDER = r"""
import datetime, json, sys, threading, time
from pathlib import Path
from portguard.log.syslog import SyslogSink
from portguard.log.syslogtarget import TlsSettings

settings = json.loads(sys.argv[1])
tls = settings["tls"]
if tls is not None:
    files = {key: Path(tls[key]) if tls.get(key) else None for key in ("ca", "cert", "key")}
    tls = TlsSettings(**files, server_name=tls.get("server_name"))
sink = SyslogSink(settings["address"], tls=tls, backoff=(0.1, 0.2, 0.5))
states, seq = [], -1
sink.on_state = lambda up, reason: states.append([up, reason, seq])

def event(seq):
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    return {
        "@timestamp": stamp.replace("+00:00", "Z"), "ecs": {"version": "8.11.0"},
        "log": {"level": "warning"}, "message": "outbound SMTP to 198.51.100.25:25 rejected",
        "event": {"kind": "event", "category": ["network"], "type": ["connection", "denied"],
                  "action": "reject", "dataset": "portguard.decision", "sequence": seq},
        "source": {"ip": "100.64.10.10", "port": 40000 + seq % 20000},
        "destination": {"ip": "198.51.100.25", "port": 25},
        "network": {"transport": "tcp", "type": "ipv4", "direction": "outbound"},
        "rule": {"id": "block-25", "ruleset": "10-isp.toml"},
    }

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command.get("interrupt_after"):
        threading.Timer(command["interrupt_after"], sink.interrupt).start()
    lost, pending, started = [], [], time.monotonic()

    def flush():  # as the writer does: a run is lost whole when its flush fails
        try:
            sink.flush()
        except OSError:
            lost.extend(pending)
        pending.clear()

    for seq in range(command["first"], command["first"] + command["count"]):
        try:
            sink.write(event(seq))
        except OSError:
            lost.append(seq)
            continue
        pending.append(seq)
        if len(pending) >= 256:
            flush()
    flush()
    elapsed = time.monotonic() - started
    print(json.dumps({"lost": lost, "states": states, "seconds": elapsed}), flush=True)
sink.close()
"""


@dataclass(frozen=True)
class Pki:
    ca: Authority
    other_ca: Authority
    server: CertPair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "portguard test CA")
    server = issue(ca, directory, "collector.test", ips=["127.0.0.1"])
    return Pki(ca, make_ca(directory, "some other CA"), server)


@pytest.fixture
def collector(netns: Netns, pki: Pki, tmp_path: Path) -> Iterator[Collector]:
    running = Collector(tmp_path / "rsyslog", netns.argv([]), tls=pki.server, ca=pki.ca.cert)
    with running:
        yield running


class Sender:
    """A SyslogSink in a Python process inside the namespace."""

    def __init__(
        self, netns: Netns, address: str, tls: dict[str, str | None] | None = None
    ) -> None:
        settings = json.dumps({"address": address, "tls": tls})
        self.proc = netns.popen(sys.executable, "-c", SENDER, settings)
        self.pid = self.proc.pid
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line: str = self.proc.stdout.readline()
        assert line, f"the sender exited ({self.proc.wait()})"
        return line

    def send(self, first: int, count: int, interrupt_after: float | None = None) -> None:
        assert self.proc.stdin is not None
        command = {"first": first, "count": count, "interrupt_after": interrupt_after}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        """What the last send did: lost (sequence numbers that raised), states, seconds."""
        result: dict[str, Any] = json.loads(self._line())
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def sequences(collector: Collector) -> Counter[int]:
    return Counter(event["event"]["sequence"] for event in collector.events())


@pytest.mark.parametrize(
    ("address", "server_name"), [(TCP, None), (TLS, "collector.test"), (TLS, None)]
)
def test_every_event_arrives_as_rfc5424_with_the_json_event(
    netns: Netns, pki: Pki, collector: Collector, address: str, server_name: str | None
) -> None:
    tls = {"ca": str(pki.ca.cert), "server_name": server_name} if address == TLS else None
    sender = Sender(netns, address, tls)
    count = 20_000
    started = time.monotonic()
    sender.send(0, count)
    result = sender.result()
    arrived = collector.wait_for(count, timeout=60)
    ingest = time.monotonic() - started
    sender.close()
    print(f"{address}: sent {count} in {result['seconds']:.2f}s, rsyslog wrote them all after "
          f"{ingest:.2f}s ({count / ingest:.0f} events/s)")  # fmt: skip
    assert result["lost"] == [] and result["states"] == []
    assert arrived == count
    messages = collector.messages()
    assert {m["input"] for m in messages} == {"tcp" if address == TCP else "tls"}
    for message in messages:
        assert message["protocol-version"] == "1"
        assert (message["app-name"], message["procid"]) == ("portguard", str(sender.pid))
        assert (message["facility"], message["severity"], message["msgid"]) == ("3", "4", "-")
        event = json.loads(message["msg"])
        assert message["timestamp"] == event["@timestamp"]
        assert event["rule"]["id"] == "block-25"
    assert sequences(collector) == Counter(range(count))


def test_a_client_with_the_wrong_ca_delivers_nothing_and_reports_the_outage(
    netns: Netns, pki: Pki, collector: Collector
) -> None:
    sender = Sender(netns, TLS, {"ca": str(pki.other_ca.cert)})
    sender.send(0, 3, interrupt_after=1.5)  # the first write waits for a collector it trusts
    result = sender.result()
    sender.close()
    assert result["lost"] == [0, 1, 2]  # interrupted: the held event and the two after it
    [(up, reason, _seq)] = result["states"]
    assert up is False
    assert reason.startswith(f"{TLS}: cannot connect: TLS certificate verification failed: ")
    assert reason.endswith(("self-signed certificate in certificate chain",  # rsyslog sends its CA
                            "unable to get local issuer certificate"))  # fmt: skip
    time.sleep(0.3)
    assert collector.count() == 0


def test_the_sink_waits_for_a_killed_collector_and_delivers_after_its_restart(
    netns: Netns, collector: Collector
) -> None:
    sender = Sender(netns, TCP)
    sender.send(0, 500)
    assert sender.result()["lost"] == []
    assert collector.wait_for(500) == 500
    collector.kill()
    sender.send(500, 500)  # the first of these waits for the collector
    time.sleep(1.5)
    collector.start()
    result = sender.result()
    sender.close()
    assert result["lost"] == []
    [down, back] = result["states"]
    assert down[:2] == [False, f"{TCP}: cannot connect: Connection refused"]
    assert back[:2] == [True, ""] and 500 <= back[2] < 1000  # with the first run after it
    assert result["seconds"] > 1.5
    assert collector.wait_for(1000) == 1000
    assert sequences(collector) == Counter(range(1000))


def test_a_collector_killed_mid_stream_loses_some_events_but_duplicates_none(
    netns: Netns, collector: Collector
) -> None:
    sender = Sender(netns, TCP)
    count = 20_000
    sender.send(0, count)
    assert collector.wait_for(2000, timeout=30) >= 2000
    collector.kill()  # what rsyslogd held in memory, and what was on the wire, is lost
    before = collector.count()
    time.sleep(1.0)
    collector.start()
    result = sender.result()
    sender.close()
    [(up, _, _), (back, _, resumed)] = result["states"]
    assert (up, back) == (False, True)
    collector.wait_for(before + count - resumed, timeout=60)
    seen = sequences(collector)
    assert max(seen.values()) == 1  # at most once
    missing = set(range(count)) - set(seen) - set(result["lost"])
    assert all(seq < resumed for seq in missing)  # everything from the reconnect on arrived
    assert set(range(resumed, count)) <= set(seen)
    print(f"killed mid-stream: {len(missing)} events lost unseen, {len(result['lost'])} raised")
