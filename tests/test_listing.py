"""Issue 12 on every backend in tests/backends: listing, paging, filters and counts through the
index; stale entries skipped and removed; cleanup and file expiry that read only what expired
(store calls counted); stores of an earlier release (no index) listed by a scan with one
warning, then indexed by ``upgrade_storage``, resumably; migration keeps the listing."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from kvsessions.documents.codec import file_to_document, session_to_document
from kvsessions.documents.keys import (
    FILE_EXPIRY_PREFIX,
    INDEX_STATE_KEY,
    encode_id,
    file_key,
    session_index_keys,
    session_key,
)
from kvsessions.documents.models import ChatSession, UploadedFileRecord
from kvsessions.errors import InvalidValueError
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.migration import migrate_storage, upgrade_storage
from kvsessions.sessions import index as index_module
from kvsessions.sessions.index import ENTRY, file_entry, head_entries
from kvsessions.sessions.manager import SessionManager
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from kvsessions.wrappers.base import StoreWrapper
from tests.backends import store_of

BASE = datetime(2026, 1, 1, tzinfo=UTC)


class CountingStore(StoreWrapper):
    """Counts store calls and remembers every key read (got or scanned)."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.calls = 0
        self.read: list[str] = []

    def reset(self) -> None:
        self.calls = 0
        self.read = []

    async def _get(self, key: str) -> bytes | None:
        self.calls += 1
        self.read.append(key)
        return await self.inner._get(key)

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        self.calls += 1
        self.read.extend(keys)
        return await self.inner._get_many(keys)

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        self.calls += 1
        await self.inner._put(key, value, ttl)

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        self.calls += 1
        await self.inner._put_many(items, ttl)

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        self.calls += 1
        return await self.inner._put_if_absent(key, value, ttl)

    async def _compare_and_set(self, key: str, expected: bytes | None, new: bytes | None,
                               ttl: float | None) -> bool:
        self.calls += 1
        return await self.inner._compare_and_set(key, expected, new, ttl)

    async def _compare_and_set_with(self, key: str, expected: bytes | None, new: bytes | None,
                                    create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        self.calls += 1
        return await self.inner._compare_and_set_with(key, expected, new, create, put,
                                                      delete, swap)

    async def _delete(self, key: str) -> bool:
        self.calls += 1
        return await self.inner._delete(key)

    async def _delete_many(self, keys: list[str]) -> int:
        self.calls += 1
        return await self.inner._delete_many(keys)

    async def _scan(self, key_range: KeyRange, reverse: bool,
                    limit: int | None = None) -> AsyncIterator[list[tuple[str, bytes]]]:
        self.inner.scan_batch_size = self.scan_batch_size
        async for page in self.inner._scan(key_range, reverse, limit):
            self.calls += 1
            self.read.extend(key for key, _ in page)
            yield page


@pytest.fixture
async def counting(store_factory: StoreFactory) -> AsyncIterator[CountingStore]:
    async with store_of(store_factory, CountingStore) as store:
        yield store


@pytest.fixture
async def storage(counting: CountingStore) -> AsyncIterator[SessionStorage]:
    storage = SessionStorage(counting)
    await storage.initialize()
    yield storage


def head(session_id: str, minutes: float, status: str = "active") -> ChatSession:
    session = ChatSession.create("m")
    session.session_id = session_id
    session.created_at = BASE
    session.updated_at = BASE + timedelta(minutes=minutes)
    session.status = status
    return session


def order(sessions: Iterable[ChatSession]) -> list[str]:
    """Session ids newest first, ties by encoded id (descending), as listings order them."""
    ranked = sorted(sessions, key=lambda s: (s.updated_at, encode_id(s.session_id)),
                    reverse=True)
    return [s.session_id for s in ranked]


async def fill(store: KVStore, sessions: list[ChatSession], *, entries: bool = True) -> None:
    """Store heads as a writer of this release leaves them (``entries``) or as an earlier
    release did (no entries), fast: one put_many per 500."""
    items: list[tuple[str, bytes]] = []
    for session in sessions:
        document = orjson.loads(orjson.dumps(session_to_document(session)))
        items.append((session_key(session.session_id), orjson.dumps(document)))
        if entries:
            items += [(entry, ENTRY) for entry in head_entries(document)]
    for first in range(0, len(items), 500):
        await store.put_many(items[first:first + 500])


async def pages(storage: SessionStorage, limit: int, **filters: Any) -> list[list[str]]:
    found: list[list[str]] = []
    cursor: str | None = None
    while True:
        sessions, cursor = await storage.page_sessions(limit=limit, before=cursor, **filters)
        found.append([s.session_id for s in sessions])
        if cursor is None:
            return found


async def test_first_writes_at_once_on_a_new_store_leave_it_indexed(
        counting: CountingStore) -> None:
    """A new storage's first writes, all at once: the first checks that the store is empty
    and marks its index complete while the others wait; none lands before that check (it
    would make the store look written by an earlier release, listed by reading every head,
    with a warning, until an upgrade)."""
    storage = SessionStorage(counting)
    sessions = [head(f"at-once-{i}", minutes=i) for i in range(40)]
    assert all(await asyncio.gather(*(storage.save_session(s) for s in sessions)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.session_id for s in await storage.list_sessions()] == order(sessions)
    assert await SessionStorage(counting)._index_state.complete()


async def test_listing_paging_filters_and_counts(storage: SessionStorage) -> None:
    sessions = [head(f"team:{i % 7}%{i}", minutes=i // 2,
                     status="archived" if i % 5 == 0 else "active") for i in range(30)]
    for session in sessions:
        assert await storage.save_session(session)
    everything = order(sessions)
    archived = order(s for s in sessions if s.status == "archived")
    assert [s.session_id for s in await storage.list_sessions()] == everything
    assert [s.session_id for s in await storage.list_sessions(limit=7)] == everything[:7]
    assert [s.session_id for s in await storage.list_sessions("archived")] == archived
    assert await storage.list_sessions(limit=0) == []
    for limit in (1, 4, 30, 31):
        found = await pages(storage, limit)
        assert [i for page in found for i in page] == everything
        assert all(len(page) == limit for page in found[:-1])
    assert [i for page in await pages(storage, 2, status="archived") for i in page] == archived
    since, before = BASE + timedelta(minutes=3), BASE + timedelta(minutes=9)
    window = order(s for s in sessions if since <= s.updated_at < before)
    listed = await storage.list_sessions(updated_since=since, updated_before=before)
    assert [s.session_id for s in listed] == window and len(window) == 12
    found = await pages(storage, 5, updated_since=since, updated_before=before)
    assert [i for page in found for i in page] == window
    assert await storage.count_sessions() == 30
    assert await storage.count_sessions("archived") == 6
    with pytest.raises(InvalidValueError, match="cursor"):
        await storage.page_sessions(before="no cursor")
    with pytest.raises(InvalidValueError, match="timezone"):
        await storage.list_sessions(updated_since=datetime(2026, 1, 1))


async def test_heads_changed_by_appends_archives_and_deletes_move_in_the_listing(
    storage: SessionStorage,
) -> None:
    sessions = [head(f"s{i}", minutes=i) for i in range(5)]
    for session in sessions:
        await storage.save_session(session)
    message = sessions[0].add_message("user", "hello")
    message.created_at = BASE + timedelta(minutes=10)
    await storage.append_message("s0", message)
    sessions[1].status = "archived"
    await storage.save_session(sessions[1])
    await storage.delete_session("s2")
    assert [s.session_id for s in await storage.list_sessions()] == ["s0", "s4", "s3", "s1"]
    assert [s.session_id for s in await storage.list_sessions("active")] == ["s0", "s4", "s3"]
    assert [s.session_id for s in await storage.list_sessions("archived")] == ["s1"]
    keys = await storage.store.keys("index:")
    assert not [key for key in keys if key.endswith(":s2")], "a deleted session's entries stay"
    # Every entry left is current: the index holds one entry per session and index.
    assert len(keys) == 1 + 2 * 4


async def test_stale_entries_are_skipped_and_the_removable_ones_removed(
    storage: SessionStorage, counting: CountingStore
) -> None:
    for session in (head("a", 1), head("b", 2)):
        await storage.save_session(session)
    later_than_head = session_index_keys("a", "active", BASE + timedelta(minutes=5))
    older_than_head = session_index_keys("b", "active", BASE)
    archived_same_time = session_index_keys("b", "archived", BASE + timedelta(minutes=2))
    of_a_missing_head = session_index_keys("ghost", "active", BASE + timedelta(minutes=3))
    await counting.put_many([(key, ENTRY) for key in (*later_than_head, *older_than_head,
                                                      *archived_same_time,
                                                      *of_a_missing_head)])
    for status in (None, "active"):
        listed = await storage.list_sessions(status)
        assert [s.session_id for s in listed] == ["b", "a"]
    assert [s.session_id for s in await storage.list_sessions("archived")] == []
    assert [s.session_id for s in (await storage.page_sessions(limit=1))[0]] == ["b"]
    keys = set(await storage.store.keys("index:"))
    # An entry later than its head may be a writer on its way: left alone.
    assert set(later_than_head) <= keys
    # Older than the head, another status at the same time, or no head: removed.
    assert not keys & {*older_than_head, archived_same_time[1], *of_a_missing_head}


async def test_listing_reads_a_page_not_the_store(storage: SessionStorage,
                                                  counting: CountingStore) -> None:
    await storage.list_sessions()  # a new store: the index is complete from the start
    sessions = [head(f"s{i:04d}", minutes=i, status="archived" if i % 100 == 0 else "active")
                for i in range(1500)]
    await fill(counting, sessions)
    counting.reset()
    listed = await storage.list_sessions(limit=10)
    assert [s.session_id for s in listed] == order(sessions)[:10]
    assert len(counting.read) <= 2 * (10 + 16) and counting.calls <= 4
    counting.reset()
    listed = await storage.list_sessions("archived", limit=10)
    assert [s.session_id for s in listed] == order(s for s in sessions if s.status
                                                   == "archived")[:10]
    assert len(counting.read) <= 2 * (10 + 16) and counting.calls <= 4


async def test_cleanup_reads_and_writes_only_the_expired_sessions(
    storage: SessionStorage, counting: CountingStore, backend_name: str
) -> None:
    expired_count = 1000 if backend_name in ("memory", "sqlite") else 100
    await storage.list_sessions()
    now = datetime.now(UTC)
    stale = [head(f"old{i}", 0) for i in range(expired_count)]
    for n, session in enumerate(stale):
        session.updated_at = now - timedelta(hours=3, minutes=n % 50)
    fresh = [head(f"new{i}", 0) for i in range(3 * expired_count)]
    for session in fresh:
        session.updated_at = now
    await fill(counting, stale + fresh)
    manager = SessionManager(storage, expiry_hours=2)
    counting.reset()
    assert await manager.cleanup_expired_sessions() == expired_count
    assert not [key for key in counting.read if key.startswith("session:new")]
    # A page scan and read per 500; per session: its head read, its new entry written, the
    # head changed, its old entry removed, the head read again and the new entry written
    # again (index rules 3 and 4: a status change at the same updated_at). Keys read: its
    # entry, its head three times.
    assert counting.calls <= 6 * expired_count + 10
    assert len(counting.read) <= 4 * expired_count + 100
    assert await storage.count_sessions("expired") == expired_count
    assert await storage.list_sessions("active", limit=1) != []
    counting.reset()
    assert await manager.cleanup_expired_sessions() == 0
    assert counting.calls <= 2 and len(counting.read) <= 1


async def test_expired_files_are_found_through_the_expiry_index(
    storage: SessionStorage, counting: CountingStore
) -> None:
    await storage.list_sessions()
    now = datetime.now(UTC)
    records = []
    for n in range(200):
        record = UploadedFileRecord.create(f"f{n}", f"uri{n}", f"name{n}", 10, "text/plain")
        record.file_id = f"file{n:03d}"
        record.expires_at = now - timedelta(hours=1) if n < 40 else now + timedelta(hours=1)
        records.append(record)
    items = []
    for record in records:
        document = orjson.loads(orjson.dumps(file_to_document(record)))
        entry = file_entry(document)
        assert entry is not None
        items += [(file_key(record.file_id), orjson.dumps(document)), (entry, ENTRY)]
    await counting.put_many(items)
    renewed = records[0]  # expired in the index, saved again with a later expiry
    renewed.expires_at = now + timedelta(hours=2)
    await storage.save_file_record(renewed)
    counting.reset()
    assert await storage.delete_expired_files() == 39
    assert {key for key in counting.read if key.startswith("file:")} == {
        file_key(f"file{n:03d}") for n in range(1, 40)}
    assert await storage.load_file_record("file000") is not None
    assert await storage.load_file_record("file001") is None
    assert len(await storage.store.keys(FILE_EXPIRY_PREFIX)) == 161
    counting.reset()
    assert await storage.delete_expired_files() == 0
    assert counting.read == []


async def test_a_store_of_an_earlier_release_is_listed_then_indexed_resumably(
    storage: SessionStorage, counting: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = [head(f"s{i}", minutes=i % 13, status="archived" if i % 4 == 0 else "active")
                for i in range(40)]
    await fill(counting, sessions, entries=False)
    with pytest.warns(UserWarning, match="kvsessions upgrade"):
        listed = await storage.list_sessions(limit=15)
    assert [s.session_id for s in listed] == order(sessions)[:15]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per storage
        assert [i for page in await pages(storage, 6) for i in page] == order(sessions)
    monkeypatch.setattr(index_module, "_BUILD_BATCH", 8)
    stop_after = 2

    async def interrupt(progress: Any) -> None:
        indexing = progress.documents_before > 0  # the rewrite before it reports 0
        if indexing and progress.documents - progress.documents_before >= 8 * stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await upgrade_storage(counting, progress_callback=interrupt)
    state = orjson.loads(await counting.get(INDEX_STATE_KEY) or b"{}")
    assert state["state"] == "building" and state["after"] == session_key("s22")
    result = await upgrade_storage(counting)
    assert result["documents_indexed"] == 40 - 16
    fresh = SessionStorage(counting)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.session_id for s in await fresh.list_sessions()] == order(sessions)
        archived = [s for s in sessions if s.status == "archived"]
        assert [s.session_id for s in await fresh.list_sessions("archived")] == order(archived)
    assert (await upgrade_storage(counting))["documents_indexed"] == 0


async def test_a_migrated_store_lists_the_same(storage: SessionStorage,
                                               store_factory: StoreFactory) -> None:
    sessions = [head(f"s:{i}", minutes=i % 9, status="archived" if i % 3 else "active")
                for i in range(25)]
    for session in sessions:
        await storage.save_session(session)
    await storage.delete_session("s:3")
    destination = store_factory.new(store_factory.namespace + "_copy")
    try:
        await migrate_storage(storage.store, destination)
        copy = SessionStorage(destination)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for status in (None, "active", "archived"):
                assert ([s.session_id for s in await copy.list_sessions(status)]
                        == [s.session_id for s in await storage.list_sessions(status)])
    finally:
        await destination.close()
