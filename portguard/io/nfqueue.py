"""The kernel queue edge: the only module that imports netfilterqueue.

Every queued packet gets exactly one verdict: the verdict is applied in a `finally`, and
when deciding fails for any reason the packet gets the fail-mode verdict instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netfilterqueue import COPY_PACKET, NetfilterQueue

from portguard.decisionlog.record import Event
from portguard.gate import Outcome, Verdict
from portguard.io.hook import MARK_ALLOW, MARK_REJECT, mark_bits, with_mark_bits
from portguard.policy.model import Direction

COPY_RANGE = 512  # headers only: IPv6 extension headers and TCP options fit; payload is never read

Decider = Callable[[bytes, int, int], Outcome]  # (packet bytes, indev, outdev) -> outcome


def apply_verdict(packet: Any, verdict: Verdict, direction: Direction | None = None) -> None:
    """Tell the kernel what to do with `packet` (a netfilterqueue.Packet).

    Allow and reject mark the packet with the verdict and the connection's `direction` (None:
    internal); allow's mark, direction included, is saved to the connmark by the hook's chain.
    """
    if verdict is Verdict.ALLOW:
        packet.set_mark(with_mark_bits(packet.get_mark(), mark_bits(MARK_ALLOW, direction)))
        packet.repeat()  # the hook's chain sees the mark, saves it to the connmark, returns
    elif verdict is Verdict.REJECT:
        packet.set_mark(with_mark_bits(packet.get_mark(), mark_bits(MARK_REJECT, direction)))
        packet.repeat()  # the hook's chain sees the mark and rejects with a TCP RST
    elif verdict is Verdict.ACCEPT:
        packet.accept()
    else:
        packet.drop()


class QueueReader:
    """One bound kernel queue. Call `read()` when `fileno()` is readable."""

    def __init__(
        self,
        queue_num: int,
        max_len: int,
        decide: Decider,
        on_event: Callable[[Event], object],
        fallback: Verdict,
    ) -> None:
        self.queue_num = queue_num
        self.max_len = max_len
        self.decide = decide
        self.on_event = on_event
        self.fallback = fallback
        self.packets = 0
        self.errors = 0
        self.verdict_errors = 0
        self.last_error: BaseException | None = None
        self._nfq: Any = None

    def open(self) -> None:
        nfq = NetfilterQueue()
        nfq.bind(
            self.queue_num,
            self._on_packet,
            max_len=self.max_len,
            mode=COPY_PACKET,
            range=COPY_RANGE,
        )
        self._nfq = nfq

    def fileno(self) -> int:
        return int(self._nfq.get_fd())

    def read(self) -> None:
        """Handle every packet waiting on the socket, without blocking."""
        self._nfq.run(block=False)

    def close(self) -> None:
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None

    def _on_packet(self, packet: Any) -> None:
        self.packets += 1
        outcome = Outcome(self.fallback, None)
        try:
            outcome = self.decide(packet.get_payload(), packet.indev, packet.outdev)
        except Exception as error:  # any failure still gets a verdict
            self.errors += 1
            self.last_error = error
        finally:
            self._give_verdict(packet, outcome)
        if outcome.event is not None:
            try:
                self.on_event(outcome.event)
            except Exception as error:  # logging must never stop the packet loop
                self.errors += 1
                self.last_error = error

    def _give_verdict(self, packet: Any, outcome: Outcome) -> None:
        try:
            apply_verdict(packet, outcome.verdict, outcome.direction)
        except Exception as error:  # never let an exception into the C loop
            self.verdict_errors += 1
            self.last_error = error
