"""A session's messages as their stored documents, for readers that need neither ``ChatMessage``
objects nor parsed timestamps: the framework adapters, which keep their own object in a message's
metadata and return that (``kvsessions.integrations``).

Each document is parsed once with orjson and, when it is in the form this release writes, taken
as it is after a check of its fields (exactly the schema's eight; kind, version, the types of
the ids, role, content and metadata): no ``ChatMessage`` is built and no timestamp parsed, which
is most of a full read's cost per message. The timestamp is checked for its type only: a reader
that needs the moment parses it (``parse_timestamp``), and one that does not (the adapters,
which return what the metadata holds) is not stopped by a damaged one. Anything else (an older
version, a field of the wrong type, not JSON) takes the full path of every read
(``parse_message``: upcast, schema check, the storage's damaged-data policy) and comes back as
the document of the message read.

A reader that turns each document into its own object at once (``load_messages_as``) keeps only
that object: a document and its metadata are freed as soon as they are read, not held in a list
of them all, which at some thousand messages the garbage collector otherwise walks several
times while the list grows (a third of a load's time at 5,000 messages).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from kvsessions.documents.codec import CURRENT_VERSIONS, message_to_document
from kvsessions.documents.keys import message_prefix
from kvsessions.documents.models import MESSAGE_ROLES
from kvsessions.errors import ValidationError
from kvsessions.sessions.damaged import DamagedPolicy
from kvsessions.sessions.message_scan import parse_message
from kvsessions.sessions.storage import SessionStorage

__all__ = ["load_message_documents", "load_messages_as"]

_T = TypeVar("_T")

_loads = orjson.loads
_ROLES = frozenset(MESSAGE_ROLES)
_VERSION = CURRENT_VERSIONS["message"]
_FIELDS = 8  # kind, v, message_id, session_id, role, content, created_at, metadata


def _is_current(document: Any) -> bool:
    """A ``message`` document at the current version whose fields have the schema's types."""
    try:
        return (len(document) == _FIELDS and document["kind"] == "message"
                and type(document["v"]) is int and document["v"] == _VERSION
                and type(document["metadata"]) is dict and type(document["content"]) is str
                and document["role"] in _ROLES and type(document["message_id"]) is str
                and type(document["session_id"]) is str and type(document["created_at"]) is str)
    except (KeyError, TypeError):  # not an object, or a field missing
        return False


async def load_message_documents(storage: SessionStorage, session_id: str, *,
                                 limit: int | None = None,
                                 on_damaged: DamagedPolicy | None = None
                                 ) -> list[dict[str, Any]]:
    """The message documents of ``session_id`` in conversation order (the latest ``limit``
    when given; what ``load_messages`` returns, as documents). A damaged document raises its
    ``ValidationError``, or is left out under the ``skip`` policy (the storage's, or
    ``on_damaged``), as in every read."""
    return await load_messages_as(storage, session_id, _document, limit=limit,
                                  on_damaged=on_damaged)


async def load_messages_as(storage: SessionStorage, session_id: str,
                           convert: Callable[[dict[str, Any]], _T], *,
                           limit: int | None = None,
                           on_damaged: DamagedPolicy | None = None) -> list[_T]:
    """``convert(document)`` of each document ``load_message_documents`` returns, in the same
    order, each converted as it is read (see the module docstring)."""
    raw, documents = storage._raw, storage._documents
    handling = storage._handling(on_damaged)
    prefix = message_prefix(session_id)
    reverse = limit is not None
    found: list[_T] = []
    append = found.append
    cursor: str | None = None
    while True:
        wanted = None if limit is None else limit - len(found)
        if wanted is not None and wanted <= 0:
            break
        seen, last = 0, None
        async for page in raw.scan_pages(prefix, start_after=cursor, limit=wanted,
                                         reverse=reverse):
            seen += len(page)
            for key, value in page:
                last = key
                try:
                    document = _loads(value)
                except orjson.JSONDecodeError:
                    document = None
                if _is_current(document):
                    append(convert(document))
                    continue
                try:  # the full path names what is wrong
                    document = message_to_document(parse_message(documents, key, value))
                except ValidationError as error:
                    handling.damaged(key, error)
                else:
                    append(convert(document))
        if wanted is None or last is None or seen < wanted:
            break
        cursor = last  # damaged documents were skipped: read on for the rest of the window
    if reverse:
        found.reverse()
    return found


def _document(document: dict[str, Any]) -> dict[str, Any]:
    return document
