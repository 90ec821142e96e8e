"""Reading stored message documents fast: the common case of a scan of messages.

A page of a scan is decoded value by value (one ``orjson.loads`` each: measured, that beats
one decode of the values joined into an array, which copies them all once more), checked
against the message schema in one call for the whole page (``all_valid``), and each document
becomes a ``ChatMessage`` in one loop, its dict the message's attributes. A page holding
anything else (a damaged document, one in an older form) is read one value at a time by the
caller, where each damaged document gets its own precise error.
"""

from __future__ import annotations

import dataclasses
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
#: A checked document, less ``kind`` and ``v``, is a ChatMessage's ``__dict__`` (no copy, no
#: ``__init__`` call). Pinned here so that a change of the model (slots, another field,
#: ``__post_init__``) cannot go unnoticed.
_MODEL_FIELDS = ("message_id", "session_id", "role", "content", "created_at", "metadata")
if (tuple(f.name for f in dataclasses.fields(ChatMessage)) != _MODEL_FIELDS
        or hasattr(ChatMessage, "__slots__") or hasattr(ChatMessage, "__post_init__")):
    raise ImportError("ChatMessage changed: update kvsessions.sessions.message_reader")


def message_from_document(document: Any) -> ChatMessage | None:
    """The message of a ``message`` v1 document that meets ``message.v1.json``; None for
    anything else (which then takes the full path and gets a precise error). The document,
    just decoded, becomes the message's attributes: the caller keeps no use of it."""
    built = _messages([document])
    return None if built is None else built[0]


def messages_from_page(page: list[tuple[str, bytes]]) -> list[ChatMessage] | None:
    """The messages of ``page``, (key, value) items of a scan, in one pass; None when any
    value is not a message document of the fast path (the caller then reads them one by
    one)."""
    try:
        documents = [_loads(value) for _, value in page]
    except orjson.JSONDecodeError:
        return None
    return _messages(documents)


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
        del document["kind"], document["v"]
        document["created_at"] = moment
        message = _new(ChatMessage)
        message.__dict__ = document
        append(message)
    return messages
