"""Reading stored message documents fast: the common case of a scan of messages.

A page of a scan is read in chunks: each value decoded and checked at once into its fields
(``kvsessions.documents.message_form``: no dict per document), the chunk's timestamps checked
in one call (``all_utc_timestamps``), and each document becomes a ``ChatMessage`` in one loop,
with no check of its own. A page holding anything else (a damaged document, one in an older
form) is read one value at a time by the caller, where each damaged document gets its own
precise error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import orjson

from kvsessions.documents.codec import CURRENT_VERSIONS
from kvsessions.documents.message_form import decode_message_form
from kvsessions.documents.models import ChatMessage
from kvsessions.documents.validation import all_utc_timestamps

__all__ = ["message_from_document", "message_from_value", "messages_from_page"]

#: The fast path knows message version 1 only (its fields are ChatMessage's); once a newer one
#: exists, every read of a v1 document must be upcast, so the fast path switches itself off.
_FAST = CURRENT_VERSIONS["message"] == 1
_from_iso = datetime.fromisoformat
_loads = orjson.loads
_dumps = orjson.dumps
_new = object.__new__
_NO_METADATA = msgspec.Raw(b"{}")
#: Documents decoded and checked at once: few enough that a chunk is freed before the garbage
#: collector's young generation fills (700 objects) and promotes it, enough that the timestamp
#: check costs little per document.
_CHUNK = 64


def message_from_value(value: bytes) -> ChatMessage | None:
    """The message stored as ``value`` when it is a ``message`` v1 document that meets
    ``message.v1.json``; None for anything else (which then takes the full path and gets a
    precise error)."""
    built = _messages([value])
    return None if built is None else built[0]


def message_from_document(document: Any) -> ChatMessage | None:
    """``message_from_value`` of a document already decoded (by orjson)."""
    try:
        value = _dumps(document)
    except TypeError:  # orjson.JSONEncodeError: not a document orjson decoded
        return None
    return message_from_value(value)


def messages_from_page(page: list[tuple[str, bytes]]) -> list[ChatMessage] | None:
    """The messages of ``page``, (key, value) items of a scan, in one pass; None when any
    value is not a message document of the fast path (the caller then reads them one by
    one)."""
    messages: list[ChatMessage] = []
    for start in range(0, len(page), _CHUNK):
        built = _messages([value for _, value in page[start:start + _CHUNK]])
        if built is None:
            return None
        messages += built
    return messages


def _messages(values: list[bytes]) -> list[ChatMessage] | None:
    """The stored values as messages, or None unless every one is a document that
    ``validate_document`` passes, read as ``document_to_message`` would read it."""
    if not _FAST:
        return None
    try:
        forms = [decode_message_form(value) for value in values]
    except msgspec.DecodeError:  # not JSON, or not the schema's fields
        return None
    if not all_utc_timestamps([form.created_at for form in forms]):
        return None
    messages: list[ChatMessage] = []
    append = messages.append
    for form in forms:
        try:  # the check bounded the form (UTC, 1-6 digits of fraction) and the date
            moment = _from_iso(form.created_at)
            metadata = ({} if form.metadata == _NO_METADATA  # as every read decodes it:
                        else _loads(memoryview(form.metadata)))
        except ValueError:  # orjson.JSONDecodeError too: what orjson refuses goes the full way
            return None
        if type(metadata) is not dict:
            return None
        message = _new(ChatMessage)  # the fields are checked: __init__ would only copy them
        message.message_id = form.message_id
        message.session_id = form.session_id
        message.role = form.role
        message.content = form.content
        message.created_at = moment
        message.metadata = metadata
        append(message)
    return messages
