"""Reading a stored message document fast: the common case of a scan of messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kvsessions.documents.codec import CURRENT_VERSIONS
from kvsessions.documents.models import MESSAGE_ROLES, ChatMessage

__all__ = ["message_from_document"]

_MESSAGE_FIELD_COUNT = 8  # kind, v, message_id, session_id, role, content, created_at, metadata
_ROLES = frozenset(MESSAGE_ROLES)
#: The fast path knows message version 1 only; once a newer one exists, every read of a v1
#: document must be upcast, so the fast path switches itself off (-1 matches no version).
_FAST_MESSAGE_VERSION = 1 if CURRENT_VERSIONS["message"] == 1 else -1
_from_iso = datetime.fromisoformat


def message_from_document(document: Any) -> ChatMessage | None:
    """The message of a ``message`` v1 document that meets ``message.v1.json``, checked here
    field by field at a fraction of the schema check's cost; None for anything this fast path
    is not sure of (which then takes the full path and gets a precise error). That this accepts
    only what the schema accepts is pinned down by tests/test_storage.py."""
    if type(document) is not dict or len(document) != _MESSAGE_FIELD_COUNT:
        return None
    try:  # eight fields, all of these present: exactly the schema's fields
        kind, version = document["kind"], document["v"]
        message_id, session_id = document["message_id"], document["session_id"]
        role, content = document["role"], document["content"]
        created, metadata = document["created_at"], document["metadata"]
    except KeyError:
        return None
    if (kind != "message" or type(version) is not int or version != _FAST_MESSAGE_VERSION
            or type(message_id) is not str or not 0 < len(message_id) <= 200
            or type(session_id) is not str or not 0 < len(session_id) <= 200
            or type(role) is not str or role not in _ROLES or type(content) is not str
            or type(metadata) is not dict or type(created) is not str):
        return None
    # The timestamp in the shape this release writes, YYYY-MM-DDTHH:MM:SS[.ffffff]Z in ASCII;
    # fromisoformat then checks the digits and ranges (which the schema's pattern bounds too).
    size = len(created)
    if not ((size == 20 or (size == 27 and created[19] == ".")) and created[-1] == "Z"
            and created[4] == "-" and created[7] == "-" and created[10] == "T"
            and created[13] == ":" and created[16] == ":" and created.isascii()):
        return None
    try:
        moment = _from_iso(created)
    except ValueError:
        return None
    return ChatMessage(message_id, session_id, role, content, moment, metadata)
