"""A session's messages as their stored documents, for readers that need neither ``ChatMessage``
objects nor parsed timestamps: the framework adapters, which keep their own object in a message's
metadata and return that (``kvsessions.integrations``).

Each value is decoded once into its fields (``kvsessions.documents.message_form``: msgspec
checks the fields' types, constants and the ids' lengths as it decodes, with no dict per
document) and its metadata by orjson, as every read decodes it; the reader's converter gets
both. No ``ChatMessage`` is built and no timestamp parsed, which is most of a full read's cost
per message. The timestamp is checked for its type only: a reader that needs the moment parses
it (``parse_timestamp``), and one that does not (the adapters, which return what the metadata
holds) is not stopped by a damaged one. A value the form refuses is decoded by orjson and
taken when its fields have the schema's types (an id longer than the schema allows included, as
before); anything else (an older version, a field of the wrong type, not JSON) takes the full
path of every read (``parse_message``: upcast, schema check, the storage's damaged-data policy)
and comes back as the document of the message read.

A reader that turns each document into its own object at once (``load_messages_as``) keeps only
that object: a document and its metadata are freed as soon as they are read, not held in a list
of them all, which at some thousand messages the garbage collector otherwise walks several
times while the list grows (a third of a load's time at 5,000 messages).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import orjson

from kvsessions.documents.codec import CURRENT_VERSIONS, message_to_document
from kvsessions.documents.keys import message_prefix
from kvsessions.documents.message_form import MessageForm, decode_message_form
from kvsessions.documents.models import MESSAGE_ROLES
from kvsessions.errors import ValidationError
from kvsessions.sessions.damaged import DamagedPolicy
from kvsessions.sessions.message_scan import parse_message
from kvsessions.sessions.storage import SessionStorage

__all__ = ["FormConverter", "load_message_documents", "load_messages_as"]

_T = TypeVar("_T")
#: What ``load_messages_as`` makes of each message: its fields and its decoded metadata (the
#: form's ``metadata`` is the raw JSON of it).
FormConverter = Callable[[MessageForm, dict[str, Any]], _T]

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
                           convert: FormConverter[_T], *,
                           limit: int | None = None,
                           on_damaged: DamagedPolicy | None = None) -> list[_T]:
    """``convert(form, metadata)`` of each document ``load_message_documents`` returns, in
    the same order, each converted as it is read (see the module docstring)."""
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
                    form = decode_message_form(value)
                    metadata = _loads(memoryview(form.metadata))
                except (msgspec.DecodeError, orjson.JSONDecodeError):
                    pass
                else:
                    if type(metadata) is dict:
                        append(convert(form, metadata))
                        continue
                try:
                    document = _loads(value)
                except orjson.JSONDecodeError:
                    document = None
                if not _is_current(document):
                    try:  # the full path names what is wrong
                        document = message_to_document(parse_message(documents, key, value))
                    except ValidationError as error:
                        handling.damaged(key, error)
                        continue
                append(convert(_form(document), document["metadata"]))
        if wanted is None or last is None or seen < wanted:
            break
        cursor = last  # damaged documents were skipped: read on for the rest of the window
    if reverse:
        found.reverse()
    return found


def _form(document: dict[str, Any]) -> MessageForm:
    """The form of a document read the slow way."""
    return MessageForm(document["kind"], document["v"], document["message_id"],
                       document["session_id"], document["role"], document["content"],
                       document["created_at"], msgspec.Raw(orjson.dumps(document["metadata"])))


def _document(form: MessageForm, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"kind": form.kind, "v": form.v, "message_id": form.message_id,
            "session_id": form.session_id, "role": form.role, "content": form.content,
            "created_at": form.created_at, "metadata": metadata}
