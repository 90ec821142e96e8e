"""Field names between JSON and MongoDB: the escape the MongoDB store applies, and its undoing.

MongoDB restricts some field names and BSON cannot hold others, so those, and only those, are
escaped percent-style: ``%`` -> ``%25``, ``.`` -> ``%2E``, NUL -> ``%00``, a leading ``$`` ->
``%24``, the empty name -> ``%``, and at the top level a field of the value named ``_id``,
``_expires_at`` or ``_partition`` gets its leading ``_`` as ``%5F``. Every escaped name
contains ``%``, and every ``%`` of the original is escaped, so reading undoes it exactly.
(Releases before partitions did not reserve ``_partition``: a value field of that name in a
document they wrote is read as a field, unless it equals the key's partition.)

Documents in the collection may also come from other programs, whose names hold ``%`` freely
(``growth%2024``). A name is unescaped only when it is exactly what the escape would have
written for the name it unescapes to (uppercase hex, only the sequences above, each where the
escape puts it): ``growth%2024``, ``50%`` or a nested ``%5Fid`` are read as they are stored.
Documents this store wrote, in any release, are all such exact escapes, so they stay readable.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["EXPIRES_FIELD", "PARTITION_FIELD", "escape_names", "has_escaped_name",
           "has_non_finite", "needs_escape", "unescape_names"]

#: The date field the TTL index watches.
EXPIRES_FIELD = "_expires_at"
#: The key's partition (``kvsessions.kv.partitions``): the field a sharded cluster shards on.
PARTITION_FIELD = "_partition"
_RESERVED_TOP = frozenset({"_id", EXPIRES_FIELD, PARTITION_FIELD})
_NEEDS_ESCAPE = re.compile(r"\A(?:\$|\Z)|[.%\x00]").search
_ESCAPE_SEQUENCE = re.compile(r"%([0-9A-Fa-f]{2})")


def _escape_name(name: str, top: bool) -> str:
    if not name:
        return "%"
    escaped = name.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")
    if escaped[0] == "$":
        escaped = "%24" + escaped[1:]
    elif top and name in _RESERVED_TOP:
        escaped = "%5F" + escaped[1:]
    return escaped


def _unescape_name(name: str, top: bool) -> str:
    """The name ``_escape_name`` turned into ``name``; ``name`` itself when the escape could
    not have written it (a name from another program)."""
    plain = "" if name == "%" else _ESCAPE_SEQUENCE.sub(
        lambda match: chr(int(match[1], 16)), name)
    return plain if _escape_name(plain, top) == name else name


def _plain_object(node: dict[str, Any]) -> bool:
    """True when no field name in ``node`` needs escaping (the fast path: nothing to copy)."""
    for name, child in node.items():
        if not name or name[0] == "$" or "." in name or "%" in name or "\x00" in name:
            return False
        kind = type(child)
        if (kind is dict and not _plain_object(child)) or (
                kind is list and not _plain_array(child)):
            return False
    return True


def _plain_array(items: list[Any]) -> bool:
    for child in items:
        kind = type(child)
        if (kind is dict and not _plain_object(child)) or (
                kind is list and not _plain_array(child)):
            return False
    return True


def needs_escape(document: dict[str, Any]) -> bool:
    """True when ``escape_names(document)`` would change any name."""
    return ("_id" in document or EXPIRES_FIELD in document or PARTITION_FIELD in document
            or not _plain_object(document))


def has_escaped_name(node: Any) -> bool:
    """True when some name in ``node`` holds a ``%`` (the cheap test before unescaping)."""
    if type(node) is dict:
        return any("%" in name or has_escaped_name(child) for name, child in node.items())
    if type(node) is list:
        return any(has_escaped_name(child) for child in node)
    return False


def has_non_finite(node: Any) -> bool:
    """NaN or an infinity anywhere in a stored document (orjson writes them as null)."""
    kind = type(node)
    if kind is float:
        return not math.isfinite(node)
    if kind is dict:
        return any(has_non_finite(child) for child in node.values())
    if kind is list:
        return any(has_non_finite(child) for child in node)
    return False


def _escape_node(node: Any) -> Any:
    if type(node) is dict:
        return {
            (_escape_name(name, False) if _NEEDS_ESCAPE(name) else name): _escape_node(child)
            for name, child in node.items()
        }
    if type(node) is list:
        return [_escape_node(child) for child in node]
    return node


def _unescape_node(node: Any) -> Any:
    if type(node) is dict:
        return {
            (_unescape_name(name, False) if "%" in name else name): _unescape_node(child)
            for name, child in node.items()
        }
    if type(node) is list:
        return [_unescape_node(child) for child in node]
    return node


def escape_names(document: dict[str, Any]) -> dict[str, Any]:
    """The value's fields with every name MongoDB restricts escaped (see the module docstring);
    top-level names ``_id`` and ``_expires_at`` too, since the stored document uses them."""
    return {
        (_escape_name(name, True) if _NEEDS_ESCAPE(name) or name in _RESERVED_TOP else name):
            _escape_node(child)
        for name, child in document.items()
    }


def unescape_names(document: dict[str, Any]) -> dict[str, Any]:
    """Undo ``escape_names`` exactly; leave every other name as it is."""
    return {
        (_unescape_name(name, True) if "%" in name else name): _unescape_node(child)
        for name, child in document.items()
    }
