"""``SessionStorage.search_messages``: full-text search over message contents.

The session layer declares one text index, the ``content`` of the documents under
``message:`` (``MESSAGE_TEXT``), and asks the store for it (``KVStore.search_text``): natively
where the store has an index (SQLite FTS5, PostgreSQL, MongoDB), by a streaming scan elsewhere.
A search within one session narrows the key prefix to that session's messages; a search for
one owner (``user_id``) keeps the hits whose session head names that owner, reading each
session's head once per search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kvsessions.documents.codec import decode_document, document_to_message
from kvsessions.documents.keys import MESSAGE_PREFIX, decode_id, message_prefix, session_key
from kvsessions.documents.models import ChatMessage
from kvsessions.documents.validation import validate_document
from kvsessions.errors import InvalidValueError
from kvsessions.kv.base import KVStore
from kvsessions.kv.text_search import TextHit, TextIndex
from kvsessions.sessions.message_reader import message_from_document

__all__ = ["MESSAGE_TEXT", "MessageHit", "search_messages"]

#: What ``search_messages`` searches: the ``content`` of every message document.
MESSAGE_TEXT = TextIndex(MESSAGE_PREFIX, "content")


@dataclass(frozen=True, slots=True)
class MessageHit:
    """One message found: where it is, how well it matched (``score``: higher is better, in
    the store's own measure; ``rank``: 1 for the best hit) and the message itself."""

    session_id: str
    message_id: str
    score: float
    rank: int
    message: ChatMessage


class _OwnedBy:
    """Accepts the messages of sessions whose head names ``user_id`` (each head read once)."""

    def __init__(self, store: KVStore, user_id: str) -> None:
        self._store = store
        self._user_id = user_id
        self._owners: dict[str, bool] = {}

    async def __call__(self, key: str, value: bytes) -> bool:
        encoded = key[len(MESSAGE_PREFIX):].split(":", 1)[0]
        owned = self._owners.get(encoded)
        if owned is None:
            head = await self._store.get(session_key(decode_id(encoded)))
            owned = head is not None and _owner(head) == self._user_id
            self._owners[encoded] = owned
        return owned


def _owner(head: bytes) -> Any:
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    return document.get("user_id") if isinstance(document, dict) else None


async def search_messages(store: KVStore, query: str, *, session_id: str | None = None,
                          user_id: str | None = None, limit: int = 20,
                          validate: bool = True) -> list[MessageHit]:
    """The best ``limit`` messages whose content holds every word of ``query`` (in one
    session, or of one owner's sessions, when given), best first."""
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise InvalidValueError(f"session_id must be a non-empty str, not {session_id!r}")
    if user_id is not None and (not isinstance(user_id, str) or not user_id):
        raise InvalidValueError(f"user_id must be a non-empty str, not {user_id!r}")
    within = message_prefix(session_id) if session_id is not None else MESSAGE_PREFIX
    accept = _OwnedBy(store, user_id) if user_id is not None else None
    hits = await store.search_text(MESSAGE_TEXT, query, within=within, limit=limit,
                                   accept=accept)
    return [_message_hit(hit, rank, validate) for rank, hit in enumerate(hits, start=1)]


def _message_hit(hit: TextHit, rank: int, validate: bool) -> MessageHit:
    try:
        document = orjson.loads(hit.value)
    except orjson.JSONDecodeError:
        document = None
    message = message_from_document(document)
    if message is None:  # not the common form: the full path names what is wrong
        document = decode_document(hit.value, key=hit.key)
        if validate:
            validate_document(document, key=hit.key)
        message = document_to_message(document, key=hit.key)
    return MessageHit(message.session_id, message.message_id, hit.score, rank, message)
