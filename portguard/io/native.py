"""portguard's small C library (portguard/io/nfqbatch.c, flowlines.c, decisionlines.c and
fastpath.c, compiled by `pip install` into `_nfqbatch.so`), loaded with ctypes: batched
kernel-queue reads and verdicts (`batchqueue.py`), the conntrack DESTROY parser and flow-end
lines (`ctparse.py`), decision lines (`decisionlines.py`), the packet loop's fast path
(`fastpath.py`). Where it was not built (no C compiler at install)
`library()` is None and each falls back to Python."""

from __future__ import annotations

import ctypes
import functools
from array import array
from pathlib import Path

LIBRARY = Path(__file__).with_name("_nfqbatch.so")
CT_WORDS = 32  # room for nfqbatch.c's CT_WORDS and the two words flowlines.c adds


def load_library(path: Path = LIBRARY) -> ctypes.CDLL | None:
    """The library with its signatures, or None where it was not built (or a stale build
    lacks a function: each user then falls back to Python, as without it)."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    try:
        return _declared(lib)
    except AttributeError:  # built from an older nfqbatch.c
        return None


def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    lib.pg_recv.argtypes = [i, p, u32, i, p, p]
    lib.pg_recv.restype = i
    lib.pg_parse.argtypes = [p, u32, u32, i, p, i, p]
    lib.pg_parse.restype = i
    lib.pg_build.argtypes = [p, ctypes.c_uint16, p, i, u32]
    lib.pg_build.restype = u32
    lib.pg_send.argtypes = [i, ctypes.c_uint16, p, i, u32]
    lib.pg_send.restype = i
    lib.pg_recv_many.argtypes = [i, p, u32, i, p]
    lib.pg_recv_many.restype = i
    lib.pg_ct_parse.argtypes = [ctypes.c_char_p, u32, p]
    lib.pg_ct_parse.restype = i
    lib.pg_ct_line.argtypes = [ctypes.c_char_p, u32, p, p, p, u32]
    lib.pg_ct_line.restype = i
    lib.pg_ct_lines.argtypes = [p, u32, p, u32, p, p, u32, p, p, u32, p]
    lib.pg_ct_lines.restype = i
    d = ctypes.c_double
    lib.pg_fast_size.argtypes = []
    lib.pg_fast_size.restype = u32
    lib.pg_fast_init.argtypes = [p, ctypes.c_char_p, u32, u32, d]
    lib.pg_fast_init.restype = i
    lib.pg_fast_flush.argtypes = [p]
    lib.pg_fast_flush.restype = None
    lib.pg_fast_interfaces.argtypes = [p, p, ctypes.c_char_p, u32]
    lib.pg_fast_interfaces.restype = i
    lib.pg_fast_text.argtypes = [p, u32, ctypes.c_char_p, u32]
    lib.pg_fast_text.restype = i
    lib.pg_fast_take_hits.argtypes = [p, p, u32]
    lib.pg_fast_take_hits.restype = u32
    lib.pg_fast_learn.argtypes = [p, u32, u32, u32, u32, u32]
    lib.pg_fast_learn.restype = i
    lib.pg_fast_drop.argtypes = [p, u32, u32, u32, u32, d]
    lib.pg_fast_drop.restype = None
    lib.pg_fast_decide.argtypes = [p, p, p, u32, u32, d, p, p, u32, p, p, p]
    lib.pg_fast_decide.restype = i
    lib.pg_decision_lines.argtypes = [ctypes.c_char_p, u32, p, p, u32, p, u32, p, u32]
    lib.pg_decision_lines.restype = i
    lib.pg_sha1.argtypes = [ctypes.c_char_p, u32, p, i]
    lib.pg_sha1.restype = i
    return lib


class LineForm(ctypes.Structure):
    """flowlines.c's pg_line_form: what every flow-end line shares (the strings NUL-ended;
    whoever makes one keeps the bytes they point to)."""

    _fields_ = [
        ("verdict_mask", ctypes.c_uint32),
        ("allow", ctypes.c_uint32),
        ("direction_mask", ctypes.c_uint32),
        ("direction_shift", ctypes.c_uint32),
        ("head", ctypes.c_char_p),
        ("directions", ctypes.c_char_p),
        ("observer", ctypes.c_char_p),
    ]


MAX_ACTIONS = 8  # decisionlines.c's


class DecisionForm(ctypes.Structure):
    """decisionlines.c's pg_decision_form: what every decision line shares (the strings
    NUL-ended; whoever makes one keeps the bytes they point to)."""

    _fields_ = [
        ("actions", ctypes.c_uint32),
        ("names", ctypes.c_char_p * MAX_ACTIONS),
        ("heads", ctypes.c_char_p * MAX_ACTIONS),
        ("observer", ctypes.c_char_p),
    ]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The library, loaded once per process."""
    return load_library()


def address(buffer: array[int] | bytearray) -> int:
    """Where a buffer's bytes are, for the C functions (the buffer must outlive the call)."""
    if isinstance(buffer, array):
        return buffer.buffer_info()[0]
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
