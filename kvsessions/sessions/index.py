"""Index entries: keys that sort sessions by ``updated_at`` (all of them, per status, and per
owner: application, user, both) and file records by ``expires_at``, kept right by ordinary KV
writes, with no multi-key transaction.

The keys are in ``kvsessions.documents.keys``. An entry *names* a head (session id, status,
updated_at); it is *current* when the head it names says exactly that. The rules:

1. **Before** a head changes, the entries of the new head are written;
   **after** it changed, the entries only the old head had are deleted.
   So the current entries of a head exist whenever the head does.
2. Readers check every entry against the head it names, never trust it alone: a missing or
   ``deleting`` head, or one whose fields differ, is skipped; a listing therefore never shows
   a deleted session, nor one twice (an id has one current entry per index).
3. Whoever deletes an entry (a writer after its change, a reader removing a stale one) then
   reads the head again and puts back any deleted entry that is current again: a writer that
   wrote that same entry (before its head change) may have been overtaken by the delete.
4. A writer whose new entries may have been deleted between its write and its head change
   (by rule 3's readers: a creation, a status change at the same ``updated_at``, a save that
   sets ``updated_at`` back) reads the head after the change and puts them again.

A reader removes an entry only when no writer can still be on its way to making it current
without rule 4: the head is gone or ``deleting``, or it is later than the entry (or equally
late with another status). An entry later than its head (a writer on its way, or one that
crashed between entry and head) is skipped and left alone.

A writer does all of rule 1 in one call, ``compare_and_set_with`` (new entries, head, old
entries). Where the store makes that one transaction (SQLite, PostgreSQL, single-server Redis,
memory: ``atomic_compare_and_set_with``; not Redis Cluster, whose partitions are in other
slots), the entries change exactly when the head does: no entry a writer wrote waits for its
head change, and none it deletes can be one another writer has just written for a head change
still to come (that writer's compare-and-set then fails, and it writes its entries again from
the new head). So rules 3 and 4 hold for such writers without the read again, and an append
costs what it cost before the index: one call per head change.
Readers still follow rule 3 everywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from kvsessions.documents.codec import parse_timestamp
from kvsessions.documents.keys import (
    APP_INDEX_PREFIX,
    FILE_PREFIX,
    INDEX_STATE_KEY,
    OWNER_INDEX_PREFIX,
    SESSION_INDEX_PREFIX,
    SESSION_PREFIX,
    STATUS_INDEX_PREFIX,
    USER_INDEX_PREFIX,
    file_expiry_key,
    index_entry_parts,
    index_timestamp,
    session_entries,
    session_key,
)
from kvsessions.documents.models import SESSION_STATUSES
from kvsessions.errors import KVSessionsError
from kvsessions.kv.base import KVStore
from kvsessions.kv.values import CheckedValue
from kvsessions.sessions.heads import DELETING, Head

__all__ = [
    "ENTRY",
    "IndexState",
    "SessionIndex",
    "build_index",
    "every_entry",
    "file_entry",
    "head_entries",
    "is_removable",
    "time_text",
]

#: The value of every entry: its key says everything.
ENTRY = orjson.dumps({"kind": "index", "v": 1})
_CHECKED_ENTRY = CheckedValue(ENTRY)
_COMPLETE = orjson.dumps({"kind": "index", "v": 1, "state": "complete"})
#: Heads or records one build step reads.
_BUILD_BATCH = 500

Decode = Callable[[str, bytes], dict[str, Any]]


def head_entries(document: dict[str, Any] | None) -> frozenset[str]:
    """The current entries of a head (none for a missing or ``deleting`` one)."""
    if document is None or document["status"] == DELETING:
        return frozenset()
    return frozenset(session_entries(document["session_id"], document["status"],
                                     document.get("user_id"), document.get("app_name"),
                                     time_text(document["updated_at"])))


def every_entry(document: dict[str, Any]) -> frozenset[str]:
    """The entries a head at ``document``'s ``updated_at`` may have had under any status (a
    ``deleting`` mark does not keep the status before it): what a delete removes."""
    return frozenset(entry for status in SESSION_STATUSES
                     for entry in head_entries({**document, "status": status}))


def file_entry(document: dict[str, Any] | None) -> str | None:
    if document is None:
        return None
    expires = parse_timestamp(document["expires_at"], path="expires_at")
    return file_expiry_key(document["file_id"], expires)


def is_removable(entry_time: str, entry_status: str | None,
                 head: dict[str, Any] | None) -> bool:
    """Whether an entry (its timestamp text, and its status for a status index) that is not
    current may be removed by a reader (see the module docstring)."""
    if head is None or head["status"] == DELETING:
        return True
    head_time = time_text(head["updated_at"])
    return head_time > entry_time or (
        head_time == entry_time and entry_status is not None and head["status"] != entry_status)


def time_text(text: str, key: str | None = None) -> str:
    """``index_timestamp`` of a stored timestamp, without parsing it when it is already in
    the form this release writes (``...SS.ffffffZ``, or ``...SSZ`` for whole seconds)."""
    size = len(text)
    if size == 27 and text[19] == "." and text[26] == "Z" and text[10] == "T":
        return text
    if size == 20 and text[19] == "Z" and text[10] == "T":
        return text[:19] + ".000000Z"
    return index_timestamp(parse_timestamp(text, key=key, path="updated_at"))


class SessionIndex:
    """The writer's and the remover's side of the rules, on the raw store of one storage."""

    def __init__(self, raw: KVStore, decode: Decode) -> None:
        self._raw = raw
        self._decode = decode

    async def change(self, session_id: str, head: Head | None, new: dict[str, Any],
                     encoded: bytes, create: list[tuple[str, bytes]] | None = None,
                     swap: list[tuple[str, bytes, bytes | None]] | None = None) -> bool:
        """Compare-and-set the head of ``session_id`` from ``head`` (as read; None: absent)
        to ``new`` (``encoded``), with its entries by the rules, ``create`` those keys and
        ``swap`` those (see ``compare_and_set_with``); False when the head was not the one
        read, a key to create was taken or a key to swap holds another value (the head is
        then unchanged). ``encoded`` and the new values of ``create`` and ``swap`` come from
        ``encode_document``, which checked them: the store does not parse them again."""
        stored, old = (None, None) if head is None else head
        before, after = head_entries(old), head_entries(new)
        swapped = await self._raw.compare_and_set_with(
            session_key(session_id), stored, CheckedValue(encoded),
            create=[(key, CheckedValue(value)) for key, value in create or ()],
            put=[(entry, _CHECKED_ENTRY) for entry in sorted(after - before)],
            delete=sorted(before - after),
            swap=[(key, read, None if value is None else CheckedValue(value))
                  for key, read, value in swap or ()])
        if swapped and not self._raw.atomic_compare_and_set_with:
            await self._settle_change(session_id, old, new, before, after)
        return swapped

    async def _settle_change(self, session_id: str, old: dict[str, Any] | None,
                             new: dict[str, Any], before: frozenset[str],
                             after: frozenset[str]) -> None:
        """Rules 3 and 4 after a change that was not one transaction."""
        gone = before - after
        risky = after != before and (
            old is None or old["status"] == DELETING
            or time_text(new["updated_at"]) <= time_text(old["updated_at"]))
        if gone or risky:
            await self.settle(session_id, gone | (after if risky else frozenset()))

    async def settle(self, session_id: str, keys: Iterable[str]) -> None:
        """Rule 3: read the head again and put back those of ``keys`` that are current."""
        key = session_key(session_id)
        value = await self._raw.get(key)
        head = None if value is None else self._decode(key, value)
        if head is not None and head.get("session_id") != session_id:
            head = None
        back = head_entries(head) & frozenset(keys)
        if back:
            await self._raw.put_many([(entry, ENTRY) for entry in sorted(back)])

    async def remove_stale(self, stale: list[str]) -> None:
        """Remove entries a reader found stale, then settle each session they named."""
        if not stale:
            return
        await self._raw.delete_many(stale)
        by_session: dict[str, list[str]] = {}
        for entry in stale:
            session_id = _entry_session(entry)
            if session_id is not None:
                by_session.setdefault(session_id, []).append(entry)
        for session_id, entries in by_session.items():
            await self.settle(session_id, entries)


def _entry_session(entry: str) -> str | None:
    if entry.startswith(SESSION_INDEX_PREFIX):
        parts = index_entry_parts(entry, SESSION_INDEX_PREFIX)
        return None if parts is None else parts[1]
    for status in SESSION_STATUSES:
        prefix = f"{STATUS_INDEX_PREFIX}{status}:"
        if entry.startswith(prefix):
            parts = index_entry_parts(entry, prefix)
            return None if parts is None else parts[1]
    for prefix, owner_parts in ((OWNER_INDEX_PREFIX, 2), (APP_INDEX_PREFIX, 1),
                                (USER_INDEX_PREFIX, 1)):
        if entry.startswith(prefix):
            # the owner parts are encoded ids (no ':'): skip them, then read time and id
            rest = entry[len(prefix):].split(":", owner_parts)
            if len(rest) <= owner_parts:
                return None
            parts = index_entry_parts(rest[owner_parts], "")
            return None if parts is None else parts[1]
    return None


class IndexState:
    """Whether a store's entries are complete (``index:state``), read once per storage. A
    store with no state document but no session or file either (a new one) is complete from
    the start; one written by an earlier release needs ``build_index``, and until then
    listings scan every head, with one warning."""

    def __init__(self, raw: KVStore) -> None:
        self._raw = raw
        self._complete = False
        self._checked = False
        self._warned = False
        #: The first write's check while it runs; a future other loops can wait for too (a
        #: storage serves the event loops of several threads), set under ``_guard``, a
        #: thread lock never held across an ``await``.
        self._checking: concurrent.futures.Future[None] | None = None
        self._guard = threading.Lock()

    async def before_write(self) -> None:
        """Before this storage's first write: a store still empty is marked complete now,
        so that what this release writes is never taken for an earlier release's data. The
        first writes wait for that check together: a write let through meanwhile would make
        the store look written by an earlier release (not empty, not marked), and every
        listing would read every head until an upgrade. A check that fails (or whose caller
        is cancelled) lets the next writer check again."""
        while not self._checked:
            with self._guard:
                running, mine = self._checking, self._checking is None
                if running is None:
                    running = self._checking = concurrent.futures.Future()
            if not mine:
                await asyncio.shield(asyncio.wrap_future(running))
                continue
            try:
                await self.complete()
                self._checked = True
            finally:
                with self._guard:
                    self._checking = None
                running.set_result(None)

    async def complete(self) -> bool:
        if self._complete:
            return True
        value = await self._raw.get(INDEX_STATE_KEY)
        if value is None and await _empty(self._raw):
            await self._raw.put_if_absent(INDEX_STATE_KEY, _COMPLETE)
            value = await self._raw.get(INDEX_STATE_KEY)
        self._complete = value is not None and orjson.loads(value).get("state") == "complete"
        return self._complete

    async def complete_for_reading(self) -> bool:
        """``complete()``, warning once per storage when it is not."""
        if await self.complete():
            return True
        if not self._warned:
            self._warned = True
            warnings.warn("this store's session index is not built yet: listings and "
                          "cleanups read every session head until `kvsessions upgrade URL` "
                          "has built it", stacklevel=4)
        return False


async def _empty(raw: KVStore) -> bool:
    for prefix in (SESSION_PREFIX, FILE_PREFIX):
        async for _ in raw.scan(prefix, limit=1):
            return False
    return True


ProgressReport = Callable[[int, str], Awaitable[None]]


async def build_index(raw: KVStore, decode: Decode,
                      progress: ProgressReport | None = None) -> int:
    """Write the entries of every file record and session head, then mark the index complete;
    the number of documents indexed. Resumable: the state document keeps the last key done,
    and a run continues after it. Safe beside writers of this release (they keep their own
    entries; an entry written here for a head changed meanwhile is stale, and readers remove
    it)."""
    value = await raw.get(INDEX_STATE_KEY)
    state = {} if value is None else orjson.loads(value)
    if state.get("state") == "complete":
        return 0
    after = state.get("after") if isinstance(state.get("after"), str) else None
    done = 0
    for prefix in (FILE_PREFIX, SESSION_PREFIX):
        if after is not None and not after.startswith(prefix) and after > prefix:
            continue  # this range was finished by an earlier run
        start = after if after is not None and after.startswith(prefix) else None
        async for page in raw.scan_pages(prefix, start_after=start):
            for first in range(0, len(page), _BUILD_BATCH):
                batch = page[first:first + _BUILD_BATCH]
                entries: list[tuple[str, bytes]] = []
                for key, item in batch:
                    try:
                        document = decode(key, item)
                        if prefix == FILE_PREFIX:
                            entry = file_entry(document)
                            entries += [] if entry is None else [(entry, ENTRY)]
                        else:
                            entries += [(entry, ENTRY)
                                        for entry in sorted(head_entries(document))]
                    except (KVSessionsError, KeyError, TypeError):
                        continue  # a damaged document: `kvsessions validate` reports it
                if entries:
                    await raw.put_many(entries)
                done += len(batch)
                last = batch[-1][0]
                await raw.put(INDEX_STATE_KEY, orjson.dumps(
                    {"kind": "index", "v": 1, "state": "building", "after": last}))
                if progress is not None:
                    await progress(done, last)
        after = None
    await raw.put(INDEX_STATE_KEY, _COMPLETE)
    return done

