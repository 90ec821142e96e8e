"""Listing, paging and counting sessions: a short reverse scan of the updated-at index plus
one ``get_many`` of the heads its entries name (``kvsessions.sessions.index`` says why that is
exact under concurrent writers). A mixin of ``SessionStorage``, which provides the stores.

Order is newest ``updated_at`` first, ties by session id (descending, as encoded in keys). A
page's *cursor* is the position of its last session; the next page holds the sessions
strictly below it, so a session shows at most once across pages, and every session not
updated while the pages are read shows exactly once. A session updated meanwhile moves above
the cursor: a fresh listing shows it.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from kvsessions.documents.codec import parse_timestamp
from kvsessions.documents.keys import (
    FILE_PREFIX,
    SESSION_PREFIX,
    encode_id,
    index_entry_parts,
    index_timestamp,
    session_index_prefix,
    session_key,
)
from kvsessions.documents.models import SESSION_STATUSES, ChatSession, utc_now
from kvsessions.errors import InvalidValueError
from kvsessions.kv.base import KVStore
from kvsessions.sessions.arguments import check_limit, check_status
from kvsessions.sessions.heads import DELETING
from kvsessions.sessions.index import IndexState, SessionIndex, is_removable, time_text
from kvsessions.sessions.owners import OwnerFilter, owner_filter
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["SessionListing", "SessionPage"]

#: Sessions of one page and the cursor of the next (None: this was the last page).
SessionPage = tuple[list[ChatSession], str | None]
#: Entries read beyond what a page still needs, for stale ones among them.
_SLACK = 16
#: Heads one ``get_many`` reads at most.
_READ_BATCH = 500

Listed = tuple[str, str, dict[str, Any]]  # (position, head key, head document)


def _position(document: dict[str, Any], key: str) -> str:
    updated = document["updated_at"]
    if type(updated) is not str:
        parse_timestamp(updated, key=key, path="updated_at")  # raises, naming the key
    return f"{time_text(updated, key)}:{encode_id(document['session_id'])}"


class _Window:
    """The positions a page may hold: below ``upper``, at or above ``lower``."""

    def __init__(self, before: str | None, since: datetime | None,
                 until: datetime | None) -> None:
        bounds = [bound for bound in (before, None if until is None else index_timestamp(until))
                  if bound is not None]
        self.upper = min(bounds) if bounds else None
        self.lower = None if since is None else index_timestamp(since)

    def holds(self, position: str) -> bool:
        return ((self.upper is None or position < self.upper)
                and (self.lower is None or position >= self.lower))


class SessionListing:
    """The listing half of ``SessionStorage``."""

    _documents: ValidatingStore
    _raw: KVStore
    _index: SessionIndex
    _index_state: IndexState

    def _listed(self, document: dict[str, Any], key: str) -> ChatSession:
        raise NotImplementedError

    def _read_head_document(self, key: str, value: bytes) -> dict[str, Any]:
        raise NotImplementedError

    async def list_sessions(
        self, status: str | None = None, limit: int = 100, *,
        updated_since: datetime | None = None, updated_before: datetime | None = None,
        user_id: str | None = None, app_name: str | None = None,
    ) -> list[ChatSession]:
        """Session heads (``messages`` empty, ``message_count`` from the head), most recently
        updated first: the first page of ``page_sessions``."""
        sessions, _ = await self.page_sessions(status, limit, updated_since=updated_since,
                                               updated_before=updated_before,
                                               user_id=user_id, app_name=app_name)
        return sessions

    async def page_sessions(
        self, status: str | None = None, limit: int = 100, before: str | None = None, *,
        updated_since: datetime | None = None, updated_before: datetime | None = None,
        user_id: str | None = None, app_name: str | None = None,
    ) -> SessionPage:
        """Up to ``limit`` session heads, newest first, below the cursor ``before`` (from an
        earlier page), updated at or after ``updated_since`` and before ``updated_before``,
        owned by ``user_id`` and/or ``app_name`` when given; and the cursor of the next page
        (None after the last). Reads about ``limit`` index entries and their heads, whatever
        the store's size (``kvsessions.sessions.owners``); a damaged head raises
        ``ValidationError`` naming it."""
        check_status(status)
        owner = owner_filter(user_id, app_name)
        check_limit(limit, "limit")
        if before is not None and (type(before) is not str
                                   or index_entry_parts("x" + before, "x") is None):
            raise InvalidValueError(f"before must be a cursor from page_sessions, not "
                                    f"{str(before)[:80]!r}")
        for name, moment in (("updated_since", updated_since),
                             ("updated_before", updated_before)):
            if moment is not None and (not isinstance(moment, datetime)
                                       or moment.tzinfo is None):
                raise InvalidValueError(f"{name} must be a timezone-aware datetime")
        if limit == 0:
            return [], None
        window = _Window(before, updated_since, updated_before)
        if await self._index_state.complete_for_reading():
            listed, more = await self._page_from_index(status, limit, window, owner)
        else:
            listed, more = await self._page_from_scan(status, limit, window, owner)
        sessions = [self._listed(document, key) for _, key, document in listed]
        return sessions, (listed[-1][0] if more and listed else None)

    async def _page_from_index(self, status: str | None, limit: int, window: _Window,
                               owner: OwnerFilter | None = None) -> tuple[list[Listed], bool]:
        prefix = session_index_prefix(status) if owner is None else owner.prefix
        start = None if window.upper is None else prefix + window.upper
        found: dict[str, Listed] = {}
        stale: list[str] = []
        boundary = ""
        exhausted = False
        while not exhausted:
            settled = sum(1 for item in found.values() if item[0] >= boundary)
            want = limit - settled + _SLACK
            chunk = [key async for key, _ in self._raw.scan(prefix, start_after=start,
                                                            limit=want, reverse=True)]
            exhausted = len(chunk) < want
            entries: list[tuple[str, str, str]] = []  # (entry key, time text, session id)
            for key in chunk:
                parts = index_entry_parts(key, prefix)
                if parts is None:
                    continue
                if window.lower is not None and key[len(prefix):] < window.lower:
                    exhausted = True
                    break
                entries.append((key, *parts))
                boundary = key[len(prefix):]
            await self._check_entries(entries, status, window, found, stale, owner)
            if chunk:
                start = chunk[-1]
            if sum(1 for item in found.values() if item[0] >= boundary) >= limit:
                break
        await self._index.remove_stale(stale)
        ordered = sorted(found.values(), key=lambda item: item[0], reverse=True)
        if not exhausted:
            ordered = [item for item in ordered if item[0] >= boundary]
        return ordered[:limit], len(ordered) > limit or not exhausted

    async def _check_entries(self, entries: list[tuple[str, str, str]], status: str | None,
                             window: _Window, found: dict[str, Listed],
                             stale: list[str], owner: OwnerFilter | None = None) -> None:
        """Read the heads ``entries`` name; keep the live ones in the window in ``found``
        (by their own position, which a concurrent writer may have moved), and note the
        entries that readers may remove in ``stale``."""
        ids = list(dict.fromkeys(session_id for _, _, session_id in entries))
        heads: dict[str, dict[str, Any] | None] = {}
        for first in range(0, len(ids), _READ_BATCH):
            batch = ids[first:first + _READ_BATCH]
            keys = [session_key(session_id) for session_id in batch]
            for session_id, key, value in zip(batch, keys, await self._raw.get_many(keys),
                                              strict=True):
                head = None if value is None else self._read_head_document(key, value)
                heads[session_id] = (head if head is not None
                                     and head.get("session_id") == session_id else None)
        for entry, entry_time, session_id in entries:
            head = heads[session_id]
            live = head is not None and head["status"] != DELETING and (
                status is None or head["status"] == status) and (
                owner is None or owner.matches(head))
            if head is not None and live:
                key = session_key(session_id)
                position = _position(head, key)
                if window.holds(position):
                    found[session_id] = (position, key, head)
                if position.startswith(entry_time + ":"):
                    continue  # current
            # an owner entry is not a status entry: a status asked for is a filter on it
            if is_removable(entry_time, status if owner is None else None, head):
                stale.append(entry)

    async def _page_from_scan(self, status: str | None, limit: int, window: _Window,
                              owner: OwnerFilter | None = None) -> tuple[list[Listed], bool]:
        """The page from every head (stores whose index is not built yet)."""
        heap: list[Listed] = []
        async for key, document in self._live_heads(status):
            position = _position(document, key)
            if not window.holds(position) or (owner is not None
                                              and not owner.matches(document)):
                continue
            item = (position, key, document)
            if len(heap) <= limit:
                heapq.heappush(heap, item)
            elif position > heap[0][0]:
                heapq.heapreplace(heap, item)
        ordered = sorted(heap, key=lambda item: item[0], reverse=True)
        return ordered[:limit], len(ordered) > limit

    async def _live_heads(self, status: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Every head with ``status`` (any but ``deleting`` for None), each checked once: a
        damaged head raises rather than being silently left out."""
        async for page in self._raw.scan_pages(SESSION_PREFIX):
            for key, value in page:
                document = self._read_head_document(key, value)
                if document["status"] != DELETING and (status is None
                                                       or document["status"] == status):
                    yield key, document

    async def iter_sessions(self, status: str | None = None) -> AsyncIterator[ChatSession]:
        """Every session head (no messages), in key order, streamed: for maintenance jobs."""
        check_status(status)
        async for key, document in self._live_heads(status):
            yield self._listed(document, key)

    async def count_sessions(self, status: str | None = None) -> int:
        """How many sessions (with ``status``) there are. Reads every head, streamed (the
        index has no counters): O(store), for reports, not for every request."""
        check_status(status)
        return sum([1 async for _ in self._live_heads(status)])

    async def statistics(self) -> dict[str, Any]:
        """Counts from the heads and file records (message counts are the heads' counts);
        reads every head and record, streamed."""
        by_status = dict.fromkeys(SESSION_STATUSES, 0)
        messages = 0
        async for _key, document in self._live_heads(None):
            by_status[document["status"]] = by_status.get(document["status"], 0) + 1
            messages += document["message_count"]
        files = expired_files = 0
        now = utc_now()
        async for key, document in self._documents.scan_documents(FILE_PREFIX):
            files += 1
            if parse_timestamp(document["expires_at"], key=key, path="expires_at") <= now:
                expired_files += 1
        return {
            "total_sessions": sum(by_status.values()),
            "sessions_by_status": by_status,
            "active_sessions": by_status["active"],
            "archived_sessions": by_status["archived"],
            "expired_sessions": by_status["expired"],
            "total_messages": messages,
            "total_files": files,
            "expired_files": expired_files,
        }
