"""Time-ordered identifiers (UUIDv7, RFC 9562), so that key order is creation order."""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["uuid7", "uuid7_str"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _uuid7_int() -> int:
    """A UUIDv7 as an integer: 48 bits of Unix milliseconds, then a 12-bit counter that keeps
    ids made in one process strictly increasing within a millisecond, then 62 random bits."""
    global _last_ms, _counter
    noise = int.from_bytes(os.urandom(10), "big")  # one read: the counter's start, the rest
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = (noise >> 64) & 0x3FF  # leave room to count up
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand = noise & ((1 << 62) - 1)
    return (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand


def uuid7() -> uuid.UUID:
    """A UUIDv7 (``_uuid7_int``)."""
    return uuid.UUID(int=_uuid7_int())


def uuid7_str() -> str:
    """``str(uuid7())``, formatted here: a new message or session needs only the text, and
    the ``UUID`` object costs more than the rest of making an id."""
    text = f"{_uuid7_int():032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
