"""Creating a session under an id the caller chose, only if no session has that id: what a
framework's ``create_session(session_id=...)`` and a history that creates its session on first
write need. A mixin of ``SessionStorage``.

``save_session`` of an object never stored here merges it into a head that exists (it is the
seed's "save"); this is the other operation, "insert": one ``put_if_absent`` of the head (its
index entries written before it, as ``kvsessions.sessions.index`` requires), so of several
concurrent inserts of one id exactly one returns True, and a session that exists, or is being
deleted, is left exactly as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvsessions.documents.codec import session_to_document
from kvsessions.documents.keys import session_key
from kvsessions.documents.models import ChatSession
from kvsessions.kv.base import KVStore, outlive_cancellation
from kvsessions.sessions.heads import SavedState, head_fields, next_revision
from kvsessions.sessions.index import IndexState, SessionIndex, head_entries
from kvsessions.sessions.message_changes import remember
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["SessionInsertion"]


class SessionInsertion:
    """``insert_session`` of ``SessionStorage`` (see the module docstring)."""

    _documents: ValidatingStore
    _raw: KVStore
    _index: SessionIndex
    _index_state: IndexState

    if TYPE_CHECKING:
        def _saved(self, session: ChatSession) -> SavedState: ...

        async def append_messages(self, session_id: str,
                                  messages: Any) -> None: ...

    async def insert_session(self, session: ChatSession) -> bool:
        """Store ``session`` (head, then its messages) if no session has its id; True if this
        call created it. False, with nothing written, when a session with that id is stored
        or being deleted. The head is validated before anything is written; its count starts
        at 0 and grows by the messages stored after it (``append_messages``)."""
        key = session_key(session.session_id)
        document = next_revision({**session_to_document(session), "message_count": 0}, None)
        encoded = self._documents.encode(key, document)  # raises if invalid
        await self._index_state.before_write()
        if await self._raw.get(key) is not None:
            return False
        if not await outlive_cancellation(self._insert(session.session_id, key, document,
                                                       encoded)):
            return False
        saved = self._saved(session)
        saved.base = head_fields(document)
        session.revision = document["revision"]
        if session.messages:
            await self.append_messages(session.session_id, session.messages)
            remember(saved.messages, session.messages)
        session.message_count = len(session.messages)
        return True

    async def _insert(self, session_id: str, key: str, document: dict[str, Any],
                      encoded: bytes) -> bool:
        if await self._index.change(session_id, None, document, encoded):
            return True
        if not self._raw.atomic_compare_and_set_with:
            # Another writer's head is there: take back the entries written for this one,
            # then put back those that are that head's own (rule 3 of the index).
            entries = head_entries(document)
            await self._raw.delete_many(sorted(entries))
            await self._index.settle(session_id, entries)
        return False
