"""JSON documents in PostgreSQL's JSONB: what it cannot keep exactly, and our binary codec.

JSONB cannot keep every JSON document exactly: it refuses ``\\u0000`` in strings and it stores
numbers as decimals, so ``1e16`` comes back as the integer ``10000000000000000`` and ``-0.0``
as ``0.0``. The store keeps the exact bytes of such documents beside a queryable copy.
Our connections pass a document's bytes to and from binary jsonb as they are (binary jsonb is a
version byte, then the text), so no second serialisation happens on either side.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

__all__ = ["decode_jsonb", "encode_jsonb", "jsonb_loses", "queryable_copy", "split_exact"]

_NUL_ESCAPE = b"\\u0000"
#: A digit followed by an exponent mark: the only way a JSON number has an exponent.
_EXPONENT = re.compile(rb"[0-9][eE]")


def jsonb_loses(value: bytes) -> bool:
    """True when JSONB would not give ``value`` back as an equal document.

    JSONB refuses NUL in strings; it keeps a number as a decimal, which returns a float written
    with an exponent and no fraction left (``1e16``, ``1.5e300``) as an integer, and ``-0.0``
    as ``0.0``. Floats written without an exponent, and those whose decimal keeps a fraction
    (``2.5e-7`` is stored as ``0.00000025``), come back exactly. So: one substring test for
    NUL, then a walk of the decoded document for floats (its cost grows with the number of
    values, not with the length of strings); the exponent test runs only when an integral float
    is found, and may fire on a string ("3e4f"), which only costs a needless exact copy.
    """
    if _NUL_ESCAPE in value:
        return True
    stack: list[Any] = [orjson.loads(value)]
    exponent: bool | None = None
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
        elif kind is float and node.is_integer():
            if node == 0.0 and math.copysign(1.0, node) < 0:
                return True
            if exponent is None:
                exponent = _EXPONENT.search(value) is not None
            if exponent:
                return True
    return False


def queryable_copy(value: bytes) -> bytes:
    """The document JSONB can hold: each ``\\u0000`` escape becomes ``\\ufffd``. (After an
    escaped backslash the text "u0000" becomes "ufffd": still valid, only this copy changes.)"""
    return value.replace(_NUL_ESCAPE, b"\\ufffd")


def split_exact(value: bytes) -> tuple[bytes, bytes | None]:
    """(value for the jsonb column, exact bytes for ``raw`` or None)."""
    if jsonb_loses(value):
        return queryable_copy(value), value
    return value, None


def encode_jsonb(value: bytes) -> bytes:
    return b"\x01" + value


def decode_jsonb(data: bytes) -> bytes:
    return data[1:]
