"""The packet loop's fast path: allows the gate already gave, answered again in C (fastpath.c).

The gate decides a connection by its (version, source, destination, destination port,
direction) and the policy in force; an allow of a rule without a rate limit is the same for
every SYN of that key until something it depends on changes. After the gate gave one for an
IPv4 connection, `learn` teaches it to the C memo; `decide` then answers SYNs of that key in C
(verdict words, decision records as the hand-over carries them, the gate's flow ids and hit
counts), in the batch's order up to the first packet the gate must decide; the batch reader
has the gate decide that one and offers the fast path the rest. It is exact: the verdicts,
marks, records, flow ids and counts are those the gate gives (the unit tests run both on the
same packets), except that a fast-path record has the batch's time.

What the gate's allow depends on, and what starts a new memo generation here: the policy
object (a reload), a quarantine added (it refuses before the policy). The interfaces only give
a packet's direction, which is part of the key: the C side gets the table `WanInterfaces`
knows whenever it changes. A SYN whose 5-tuple the gate dropped less than its retransmission
window ago is left to the gate (two rotating Bloom filters of dropped 5-tuples in C, fed by
`Gate.on_drop`). IPv6, IPv4 with options, rate-limited rules, `log = false` rules and denies
are never memoised.
"""

from __future__ import annotations

import ctypes
import marshal
from array import array
from collections.abc import Sequence

from portguard.core.events.record import DecisionRecord
from portguard.core.gate import RETRANSMISSION_WINDOW, FlowKey, Gate, Outcome, Verdict
from portguard.core.marks import MARK_MASK
from portguard.core.policy.model import Action, Direction
from portguard.io.interfaces import WanInterfaces
from portguard.io.native import address, library
from portguard.io.nfqueue import answer

# fastpath.c's numbering: (arrives on WAN, leaves on WAN) as core/gate.py's _DIRECTIONS
DIRECTION_CODES = {
    Direction.EXTERNAL: 0,
    Direction.OUTBOUND: 1,
    Direction.INBOUND: 2,
    Direction.INTERNAL: 3,
}
MAX_PACKETS = 256  # a batch's packets at most (batchqueue.MAX_BATCH)
RECORD_ROOM = 1024  # bytes of the records' buffer a packet has
MAX_TEXT = RECORD_ROOM - 256  # bytes of a decision's texts, marshalled (longer: the gate's)
_FLAG_REF = 0x80


class FastPath:
    """One worker's memo of allows (see the module's text). Not thread-safe: the packet loop's."""

    def __init__(self, gate: Gate, wan: WanInterfaces, lib: ctypes.CDLL) -> None:
        self.gate = gate
        self.wan = wan
        self._lib = lib
        self._state = bytearray(lib.pg_fast_size())
        self._at = address(self._state)
        prefix = gate.id_prefix.encode("ascii")
        if lib.pg_fast_init(self._at, prefix, len(prefix), ~MARK_MASK & 0xFFFFFFFF,
                            ctypes.c_double(RETRANSMISSION_WINDOW)) != 0:  # fmt: skip
            raise ValueError(f"flow id prefix {gate.id_prefix!r} is too long for the fast path")
        self._texts: dict[tuple[str, ...], int] = {}  # a record's middle fields -> text
        self._hit_keys: list[tuple[str, Action]] = []  # each text's (rule id, action)
        self._hits = array("Q", bytes(8 * 4096))
        self._verdicts = array("I", bytes(4 * 4 * MAX_PACKETS))
        self._records = bytearray(RECORD_ROOM * MAX_PACKETS)
        self._size = array("I", [0])
        self._decided = array("Q", [0])
        self._next = array("I", [0])
        self._buffers = (address(self._verdicts), address(self._records), address(self._size),
                         address(self._decided), address(self._next))  # fmt: skip
        self.failures = 0  # learning that failed (the packet's verdict was the gate's anyway)
        self._ruleset = gate.ruleset
        self._added = gate.quarantine.added
        self._known: dict[int, bool] | None = None
        self._known_size = 0  # what `known` held when the C side was told
        self.answered = 0  # packets answered here
        gate.on_drop = self._dropped

    def decide(self, buffer: int, meta: int, start: int, count: int, now: float) -> int:
        """Answer the packets of a batch (`count`: nfqbatch.c's meta words at `meta`, payloads
        in the buffer at `buffer`) from `start` on, in order, up to the first the gate must
        decide; how many. `verdicts` and `records` then give theirs; `next` the first packet
        after that one the memo could answer (`count`: none)."""
        self._sync()
        self._decided[0] = self.gate.decided
        verdicts, records, size, decided, found = self._buffers
        answered = int(self._lib.pg_fast_decide(
            self._at, buffer, meta, start, count, ctypes.c_double(now), verdicts, records,
            len(self._records), size, decided, found,
        ))  # fmt: skip
        if answered:
            self.gate.decided = int(self._decided[0])
            self.answered += answered
        return answered

    @property
    def next(self) -> int:
        """After `decide`: the first packet past the one that stopped it the memo could answer
        as things stand (the packets between are the gate's)."""
        return int(self._next[0])

    def verdicts(self, answered: int) -> list[int]:
        """The verdict words (4 a packet) of the last `decide`'s `answered` packets."""
        return self._verdicts[: 4 * answered].tolist()

    def records(self) -> bytes:
        """The last `decide`'s records as an ``r`` frame's payload (a marshalled list)."""
        return bytes(self._records[: self._size[0]])

    def learn(self, outcome: Outcome) -> None:
        """After the gate decided a packet: teach the memo an allow it may give again (never
        raises: the packet's verdict is the gate's whatever happens here)."""
        try:
            self._learn(outcome)
        except Exception:  # a bug here must not cost the packet its verdict
            self.failures += 1

    def _learn(self, outcome: Outcome) -> None:
        record, decision, direction = outcome.event, outcome.decision, outcome.direction
        if (
            outcome.verdict is not Verdict.ALLOW
            or type(record) is not DecisionRecord
            or decision is None
            or decision.limit is not None
            or direction is None
            or record.version != 4
        ):
            return
        self._sync()  # deciding it may have met a new interface; a reload may have come
        # direction .. policy version: what every SYN of the key repeats
        key: tuple[str, ...] = record[6:13]
        text = self._texts.get(key)
        if text is None:
            text = self._text(key, answer(outcome, 0, 0)[3], (decision.rule_id, decision.action))
            if text < 0:
                return
        self._lib.pg_fast_learn(self._at, record.src, record.dst, record.dport,
                                DIRECTION_CODES[direction], text)  # fmt: skip

    def fold_hits(self) -> None:
        """The decisions answered here, into the gate's hit counts (for `status`)."""
        count = self._lib.pg_fast_take_hits(self._at, address(self._hits), len(self._hit_keys))
        hits = self.gate.hits
        for index, found in enumerate(self._hits[:count]):
            if found:
                key = self._hit_keys[index]
                hits[key] = hits.get(key, 0) + found

    def _text(self, fields: Sequence[str], mark_bits: int, hit: tuple[str, Action]) -> int:
        marshalled = b"".join(_unreferenced(marshal.dumps(value)) for value in fields)
        if len(marshalled) > MAX_TEXT:  # its records might not fit a batch's buffer: the gate's
            return -1
        text = int(self._lib.pg_fast_text(self._at, mark_bits, marshalled, len(marshalled)))
        if text >= 0:
            self._texts[tuple(fields)] = text
            self._hit_keys.append(hit)
        return text

    def _sync(self) -> None:
        """A new generation when the policy or the quarantine changed; the interfaces known
        when they changed."""
        gate = self.gate
        if gate.ruleset is not self._ruleset or gate.quarantine.added != self._added:
            self._flush()
            self._ruleset, self._added = gate.ruleset, gate.quarantine.added
        known = self.wan.known
        if known is not self._known or len(known) != self._known_size:
            self._interfaces(known)

    def _interfaces(self, known: dict[int, bool]) -> None:
        """Tell the C side the interfaces known now (what it learnt stays right: it is by
        direction, and a packet's direction comes from this table)."""
        now = {index: bool(wan) for index, wan in known.items() if index != 0}
        indexes = array("I", list(now) or [0])
        sides = bytes(now.values()) or b"\0"
        self._lib.pg_fast_interfaces(self._at, address(indexes), sides, len(now))
        self._known, self._known_size = known, len(known)

    def _flush(self) -> None:
        self.fold_hits()
        self._forget_texts()
        self._lib.pg_fast_flush(self._at)

    def _forget_texts(self) -> None:
        self._texts.clear()
        self._hit_keys.clear()

    def _dropped(self, key: FlowKey, now: float) -> None:
        version, src, dst, sport, dport = key
        if version == 4:
            self._lib.pg_fast_drop(self._at, src, dst, sport, dport, ctypes.c_double(now))


def _unreferenced(dumped: bytes) -> bytes:
    """A marshalled value without marshal's mark for later references (none follow here)."""
    return bytes([dumped[0] & ~_FLAG_REF]) + dumped[1:]


def make_fast_path(gate: Gate, wan: WanInterfaces) -> FastPath | None:
    """The fast path, where the C library loads and the flow ids' prefix suits it."""
    lib = library()
    if lib is None or not gate.id_prefix.isascii():
        return None
    try:
        return FastPath(gate, wan, lib)
    except ValueError:
        return None
