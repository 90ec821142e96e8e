"""Reading stored message documents fast: the common case of a scan of messages.

A page of a scan is decoded value by value (one ``orjson.loads`` each: measured, that beats
one decode of the values joined into an array, which copies them all once more), checked
against the message schema in one call per chunk of documents (``all_valid``), and each
document becomes a ``ChatMessage`` in one loop, with no check of its own. A page holding
anything else (a damaged document, one in an older form) is read one value at a time by the
caller, where each damaged document gets its own precise error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from kvsessions.documents.codec import CURRENT_VERSIONS
from kvsessions.documents.models import ChatMessage
from kvsessions.documents.validation import all_valid

__all__ = ["message_from_document", "messages_from_page"]

#: The fast path knows message version 1 only (its fields are ChatMessage's); once a newer one
#: exists, every read of a v1 document must be upcast, so the fast path switches itself off.
_FAST = CURRENT_VERSIONS["message"] == 1
_from_iso = datetime.fromisoformat
_loads = orjson.loads
_new = object.__new__
#: Documents decoded and checked at once: few enough that they are freed before the garbage
#: collector's young generation fills (700 objects) and promotes them. Decoding a whole page
#: of 1,000 first made loads of 10,000 messages twice as slow in a process with a large heap
#: (its full collections ran far more often), for no gain on the check.
_CHUNK = 64


def message_from_document(document: Any) -> ChatMessage | None:
    """The message of a ``message`` v1 document that meets ``message.v1.json``; None for
    anything else (which then takes the full path and gets a precise error)."""
    built = _messages([document])
    return None if built is None else built[0]


def messages_from_page(page: list[tuple[str, bytes]]) -> list[ChatMessage] | None:
    """The messages of ``page``, (key, value) items of a scan, in one pass; None when any
    value is not a message document of the fast path (the caller then reads them one by
    one)."""
    messages: list[ChatMessage] = []
    for start in range(0, len(page), _CHUNK):
        try:
            documents = [_loads(value) for _, value in page[start:start + _CHUNK]]
        except orjson.JSONDecodeError:
            return None
        built = _messages(documents)
        if built is None:
            return None
        messages += built
    return messages


def _messages(documents: list[Any]) -> list[ChatMessage] | None:
    """The documents as messages, or None unless every one meets the schema (one check for
    all) and is read as ``validate_document`` would read it."""
    if not _FAST or not all_valid(documents, "message", 1):
        return None
    messages: list[ChatMessage] = []
    append = messages.append
    for document in documents:
        if type(document["v"]) is not int:  # JSON Schema takes 1.0 for 1
            return None
        try:  # the schema bounded the form (UTC, 1-6 digits of fraction) and the date
            moment = _from_iso(document["created_at"])
        except ValueError:
            return None
        message = _new(ChatMessage)  # the fields are checked: __init__ would only copy them
        message.message_id = document["message_id"]
        message.session_id = document["session_id"]
        message.role = document["role"]
        message.content = document["content"]
        message.created_at = moment
        message.metadata = document["metadata"]
        append(message)
    return messages
