"""Appending messages only if nobody wrote the session since it was read: the optimistic
concurrency of frameworks whose session objects must refuse a stale writer (Google ADK's
``StaleSessionError``). A mixin of ``SessionStorage``.

The check and the count are one ``compare_and_set`` of the head (``kvsessions.sessions.heads``:
every head write takes the next revision), so of two writers holding one revision exactly one
appends; the other gets ``RevisionConflictError`` and nothing of its call is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kvsessions.documents.models import ChatMessage
from kvsessions.errors import SessionNotFoundError
from kvsessions.kv.base import KVStore, outlive_cancellation
from kvsessions.sessions.heads import Head, check_expected_revision, check_revision

__all__ = ["ConditionalAppend"]


class ConditionalAppend:
    """``append_messages_at`` of ``SessionStorage`` (see the module docstring)."""

    store: KVStore

    if TYPE_CHECKING:
        def _encoded_messages(self, session_id: str, messages: Sequence[ChatMessage]
                              ) -> tuple[list[tuple[str, bytes]], datetime | None]: ...

        async def _live_head(self, session_id: str) -> Head | None: ...

        async def _append_counted(self, session_id: str, items: list[tuple[str, bytes]],
                                  latest: datetime, head: Head | None,
                                  expected_revision: int | None = None) -> dict[str, Any]: ...

    async def append_messages_at(self, session_id: str, messages: Sequence[ChatMessage], *,
                                 expected_revision: int) -> int:
        """``append_messages``, only if the session's head is at ``expected_revision``; the
        revision the head is at after it (the one to expect next time).
        ``RevisionConflictError`` when another writer got in first, ``SessionNotFoundError``
        when there is no such session: in both cases nothing is written."""
        check_expected_revision(expected_revision)
        items, latest = self._encoded_messages(session_id, messages)
        head = await self._live_head(session_id)
        if head is None:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store!r}")
        if latest is None:
            check_revision(f"session {session_id!r}", expected_revision, head[1])
            return expected_revision
        counted = await outlive_cancellation(
            self._append_counted(session_id, items, latest, head, expected_revision))
        return int(counted["revision"])
