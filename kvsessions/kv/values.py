"""The rules every key and value obeys, checked once before any adapter sees them.

They are the same on every store so that a document accepted by one store is accepted by all:
what one of them cannot keep losslessly (a NUL in a key, an integer beyond 64 bits, a document
nested deeper than MongoDB allows or larger than a BSON document) is refused here, for all.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import orjson

from kvsessions.errors import DocumentTooLargeError, InvalidKeyError, InvalidValueError

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_KEY_BYTES",
    "RESERVED_PREFIX",
    "CheckedValue",
    "check_key",
    "check_prefix",
    "check_value",
    "check_written",
    "prefix_upper_bound",
    "reserved_keys_allowed",
    "same_json",
]

MAX_KEY_BYTES = 512
#: Keys under this prefix belong to kvsessions itself (migration checkpoints), never to users:
#: ``check_key`` refuses them, so every store refuses to read, write or delete them.
#:
#: Why refuse rather than copy them: migrate, verify, export and backup must skip kvsessions'
#: own bookkeeping (a checkpoint copied to another store would be a stale checkpoint there), and
#: they could tell a user's key from a checkpoint only if no user could write a checkpoint's
#: name. Refusing the whole prefix at the door makes that so on every store, so a migration that
#: reports ``verified`` has copied every key a user could have stored, and a user key can never
#: overwrite, or be overwritten or deleted by, a checkpoint. Only the code that owns a reserved
#: key gets past the check, through ``reserved_keys_allowed`` naming that exact key.
RESERVED_PREFIX = "__kvsessions__:"
#: The reserved keys the running task may use (see ``reserved_keys_allowed``).
_ALLOWED_RESERVED_KEYS: ContextVar[frozenset[str]] = ContextVar(
    "kvsessions_allowed_reserved_keys", default=frozenset())
#: Containers nested in one document, the top-level object counting as 1 (MongoDB keeps 100).
MAX_DEPTH = 100
#: Encoded JSON size; leaves room under MongoDB's 16 MiB BSON limit for the key and metadata.
MAX_DOCUMENT_BYTES = 15 * 1024 * 1024 + 512 * 1024
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Values a walk visits before the byte screens become the cheaper way to check a document.
_WALK_BUDGET = 64
_NEAR_INT64 = 9.2e18
# One C-speed pass maps every byte to "0" (digit), "(" (opens a container) or " ", so that two
# cheap screens can run on the result: more openers than MAX_DEPTH may mean too deep, and a run
# of 19 digits may be an integer outside int64 (orjson would silently read it as a float).
_SCREEN = bytes(48 if 48 <= i <= 57 else 40 if i in (91, 123) else 32 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def check_key(key: object, *, what: str = "key") -> str:
    """Return ``key`` if it is a non-empty str of at most 512 UTF-8 bytes without NUL, not under
    the reserved prefix (unless the running task was allowed that very key)."""
    if type(key) is not str:
        raise InvalidKeyError(f"{what} must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError(f"{what} must not be empty")
    _check_text(key, what)
    if key.startswith(RESERVED_PREFIX) and key not in _ALLOWED_RESERVED_KEYS.get():
        raise InvalidKeyError(f"{what} {key[:60]!r} starts with {RESERVED_PREFIX!r}, which is "
                              "reserved for kvsessions' own bookkeeping")
    return key


@contextlib.contextmanager
def reserved_keys_allowed(*keys: str) -> Iterator[None]:
    """Let the current task (and tasks it starts) use exactly ``keys`` under the reserved
    prefix: kvsessions' own bookkeeping, written by the code that owns it."""
    token = _ALLOWED_RESERVED_KEYS.set(_ALLOWED_RESERVED_KEYS.get() | frozenset(keys))
    try:
        yield
    finally:
        _ALLOWED_RESERVED_KEYS.reset(token)


def check_prefix(prefix: object, *, what: str = "prefix") -> str:
    """Like ``check_key`` but the empty string (everything) is allowed."""
    if type(prefix) is not str:
        raise InvalidKeyError(f"{what} must be a str, not {type(prefix).__name__}")
    if prefix:
        _check_text(prefix, what)
    return prefix


def _check_text(text: str, what: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError(
            f"{what} {text[:40]!r} is not valid Unicode (lone surrogate)"
        ) from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"{what} is {size} UTF-8 bytes; at most {MAX_KEY_BYTES} are allowed")
    if "\x00" in text:
        raise InvalidKeyError(f"{what} {text[:40]!r} contains NUL")


class CheckedValue(bytes):
    """Bytes that ``kvsessions.documents.codec.encode_document`` made from a document it
    walked first (types, depth, integer range: the rules ``check_value`` enforces), marked so
    by the session layer as it writes them, so the store takes them without parsing them
    again (``check_written``). Writes only: orjson does not read a bytes subclass."""

    __slots__ = ()


def check_written(value: object, *, key: str | None = None) -> None:
    """``check_value`` for a value about to be written; a ``CheckedValue`` only has its size
    checked (the rest was checked on the document it was encoded from)."""
    if type(value) is CheckedValue:
        if len(value) > MAX_DOCUMENT_BYTES:
            raise DocumentTooLargeError(
                f"document is {len(value)} bytes; at most {MAX_DOCUMENT_BYTES} are allowed",
                key=key)
        return
    check_value(value, key=key)


def check_value(value: object, *, key: str | None = None) -> dict[str, Any]:
    """Check that ``value`` is UTF-8 bytes holding one JSON object every store can keep, and
    return the decoded object (adapters that store native documents reuse it)."""
    if type(value) is not bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value)
        else:
            raise InvalidValueError(
                f"value must be bytes holding a JSON object, not {type(value).__name__}", key=key
            )
    if len(value) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLargeError(
            f"document is {len(value)} bytes; at most {MAX_DOCUMENT_BYTES} are allowed", key=key
        )
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidValueError(f"value is not valid JSON: {exc}", key=key) from None
    if type(document) is not dict:
        raise InvalidValueError(
            f"value must be a JSON object, not a JSON {type(document).__name__}", key=key
        )
    # A short walk of the decoded document settles most documents; when it cannot (too many
    # values to walk cheaply, or a value near a limit), the byte screens decide, and the
    # precise checks run only when a screen fires.
    if _plainly_within_limits(document):
        return document
    screened = value.translate(_SCREEN)
    if screened.count(b"(") > MAX_DEPTH:
        _check_depth(document, key)
    if _LONG_DIGIT_RUN in screened:
        _check_integers(value, key)
    return document


def _plainly_within_limits(document: dict[str, Any]) -> bool:
    """True when walking at most ``_WALK_BUDGET`` values shows the document inside the depth
    and integer limits; False when unsure. (orjson reads an integer literal beyond 64 bits as a
    float, so a float near 2**63 is "unsure" too: only the bytes can tell.)"""
    budget = _WALK_BUDGET
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            budget -= 1
            if budget < 0:
                return False
            kind = type(child)
            if kind is dict or kind is list:
                if depth >= MAX_DEPTH:
                    return False
                stack.append((child, depth + 1))
            elif kind is int:
                if not _INT64_MIN <= child <= _INT64_MAX:
                    return False
            elif kind is float and not -_NEAR_INT64 < child < _NEAR_INT64:
                return False
    return True


def _check_depth(document: Any, key: str | None) -> None:
    stack: list[tuple[Any, int, str]] = [(document, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise DocumentTooLargeError(
                f"nested deeper than {MAX_DEPTH} levels", key=key, path=(path or "/")[:80]
            )
        if type(node) is dict:
            stack.extend((child, depth + 1, f"{path}/{name}") for name, child in node.items()
                         if type(child) in (dict, list))
        elif type(node) is list:
            stack.extend((child, depth + 1, f"{path}/{index}") for index, child in enumerate(node)
                         if type(child) in (dict, list))


def _check_integers(value: bytes, key: str | None) -> None:
    """orjson reads integers beyond 64 bits as floats; the stdlib reads them exactly."""
    def exact_int(text: str) -> int:
        number = int(text)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise DocumentTooLargeError(
                f"integer {text[:30]} is outside the signed 64-bit range every store keeps",
                key=key,
            )
        return number

    json.loads(value, parse_int=exact_int)


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound).

    Code point order equals UTF-8 byte order, so ``prefix <= k < bound`` is a prefix match that
    an ordered index can serve, with no LIKE pattern and so no wildcard to escape.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            chars.append(chr(nxt))
            return "".join(chars)
    return None


def same_json(a: Any, b: Any) -> bool:
    """The contract's equality of decoded values: strict about types (1 is not 1.0 nor True,
    -0.0 is not 0.0); object key order is free, as JSONB and BSON may reorder keys."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return bool(a == b and math.copysign(1.0, a) == math.copysign(1.0, b))
    return bool(a == b)
