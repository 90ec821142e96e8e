"""The whole SessionStorage API on every backend in tests/backends (through ``store_factory``)."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from kvsessions.documents.codec import document_to_message, message_to_document
from kvsessions.documents.keys import (
    INDEX_PREFIX,
    INDEX_STATE_KEY,
    message_key,
    message_prefix,
    session_key,
)
from kvsessions.documents.models import ChatMessage, ChatSession, UploadedFileRecord
from kvsessions.documents.validation import validate_document
from kvsessions.errors import InvalidValueError, RevisionConflictError, ValidationError
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.sessions.message_reader import message_from_document, messages_from_page
from kvsessions.sessions.storage import SessionNotFoundError, SessionStorage
from kvsessions.testing import StoreFactory
from kvsessions.wrappers.base import StoreWrapper
from kvsessions.wrappers.cache import CachedStore
from tests.backends import store_of


class RecordingStore(StoreWrapper):
    """Remembers every write (operation, key), to check what a save wrote, and the name of
    every store call (its hook's), to check how many trips an operation takes."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.writes: list[tuple[str, str]] = []
        self.calls: list[str] = []

    async def _get(self, key: str) -> bytes | None:
        self.calls.append("get")
        return await self.inner._get(key)

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        self.calls.append("get_many")
        return await self.inner._get_many(keys)

    async def _get_and_last(self, key: str, key_range: KeyRange
                            ) -> tuple[bytes | None, tuple[str, bytes] | None]:
        self.calls.append("get_and_last")
        return await self.inner._get_and_last(key, key_range)

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        self.calls.append("put")
        self.writes.append(("put", key))
        await self.inner._put(key, value, ttl)

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        self.calls.append("put_many")
        self.writes.extend(("put", key) for key, _ in items)
        await self.inner._put_many(items, ttl)

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        self.calls.append("put_if_absent")
        self.writes.append(("put_if_absent", key))
        return await self.inner._put_if_absent(key, value, ttl)

    async def _compare_and_set(self, key: str, expected: bytes | None, new: bytes | None,
                               ttl: float | None) -> bool:
        self.calls.append("compare_and_set")
        self.writes.append(("compare_and_set", key))
        return await self.inner._compare_and_set(key, expected, new, ttl)

    async def _compare_and_set_with(self, key: str, expected: bytes | None, new: bytes | None,
                                    create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        # The keys it creates, then the head (from no value it creates it, as put_if_absent
        # does), as an append wrote them one by one before (one transaction where atomic).
        # The keys it swaps come before the head, as an update or a pop wrote them before.
        self.calls.append("compare_and_set_with")
        self.writes.extend(("put_if_absent", other) for other, _ in create)
        self.writes.extend(("compare_and_set", other) for other, _, _ in swap)
        self.writes.append(("put_if_absent" if expected is None else "compare_and_set", key))
        self.writes.extend(("put", other) for other, _ in put)
        return await self.inner._compare_and_set_with(key, expected, new, create, put,
                                                      delete, swap)


def document_writes(recording: RecordingStore) -> list[tuple[str, str]]:
    """The writes of documents, without those of index entries (tests/test_listing.py)."""
    return [write for write in recording.writes if not write[1].startswith(INDEX_PREFIX)]


def appended(recording: RecordingStore, head: str, message: str) -> list[tuple[str, str]]:
    """The writes of adding one message to a stored session: where the store changes the head
    and creates the message in one transaction, one call (recorded message, then head); else
    counted first, then stored."""
    if recording.atomic_compare_and_set_with:
        return [("put_if_absent", message), ("compare_and_set", head)]
    return [("compare_and_set", head), ("put_if_absent", message)]


@pytest.fixture
async def recording(store_factory: StoreFactory) -> AsyncIterator[RecordingStore]:
    async with store_of(store_factory, RecordingStore) as store:
        yield store


@pytest.fixture
async def storage(recording: RecordingStore) -> AsyncIterator[SessionStorage]:
    storage = SessionStorage(recording)
    await storage.initialize()
    yield storage
    await storage.close()


def conversation(turns: int = 2, model: str = "gemini-2.5-flash") -> ChatSession:
    session = ChatSession.create(model, metadata={"user": "ada", "tags": ["a", "b"]})
    for i in range(turns):
        session.add_message("user" if i % 2 == 0 else "assistant", f"message {i} ✓ 😀",
                            metadata={"i": i})
    return session


async def stored_keys(storage: SessionStorage, prefix: str = "") -> list[str]:
    return await storage.store.keys(prefix)


# -------------------------------------------------------------------- save and load

async def test_save_and_load_roundtrip(storage: SessionStorage) -> None:
    session = conversation(4)
    assert await storage.save_session(session) is True
    loaded = await storage.load_session(session.session_id)
    assert loaded == session
    assert loaded is not None and loaded.created_at.tzinfo is not None
    assert [m.content for m in loaded.messages] == [f"message {i} ✓ 😀" for i in range(4)]
    assert loaded.message_count == 4


async def test_load_missing_session_is_none(storage: SessionStorage) -> None:
    assert await storage.load_session("no-such-session") is None
    assert await storage.load_session("no-such-session", last_messages=5) is None


async def test_a_new_session_is_one_store_call_where_the_store_is_atomic(
    recording: RecordingStore
) -> None:
    """Saving a session object never stored (what creating a conversation is) tries the
    create without reading the head first where the store creates head, entries and
    messages in one transaction; a session already under that id makes the try fail with
    nothing written, and the save merges into it as it always did."""
    storage = SessionStorage(recording)
    await storage.save_session(ChatSession.create("m"))  # its first write reads the index state
    session = conversation(5)
    recording.calls.clear()
    recording.writes.clear()
    assert await storage.save_session(session) is True
    if recording.atomic_compare_and_set_with:
        assert recording.calls == ["compare_and_set_with"]
    assert sorted(document_writes(recording)) == sorted(
        [("put_if_absent", message_key(session.session_id, m.message_id))
         for m in session.messages] + [("put_if_absent", session_key(session.session_id))])
    twin = ChatSession(session.session_id, "other-model", session.created_at,
                       session.updated_at)
    twin.add_message("user", "from the twin")
    assert await storage.save_session(twin) is True
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None and loaded.model == "other-model"
    assert [m.content for m in loaded.messages] == [m.content for m in session.messages] + [
        "from the twin"]
    assert loaded.message_count == 6 and loaded.revision == 2
    third = ChatSession(session.session_id, "third", session.created_at, session.updated_at)
    third.add_message("user", "never stored")
    with pytest.raises(RevisionConflictError):
        await storage.save_session(third, expected_revision=0)
    assert len(await stored_keys(storage, f"message:{session.session_id}:")) == 6
    again = await storage.load_session(session.session_id)
    assert again is not None and again.model == "other-model" and again.message_count == 6


async def test_save_writes_only_messages_not_stored_yet(
    storage: SessionStorage, recording: RecordingStore
) -> None:
    session = conversation(3)
    await storage.save_session(session)
    head = session_key(session.session_id)
    assert sorted(document_writes(recording)) == sorted(  # three new messages and a new head
        [("put_if_absent", message_key(session.session_id, m.message_id))
         for m in session.messages] + [("put_if_absent", head)])
    recording.writes.clear()
    new = session.add_message("user", "one more")
    await storage.save_session(session)
    assert document_writes(recording) == appended(
        recording, head, f"message:{session.session_id}:{new.message_id}")
    recording.writes.clear()
    await storage.save_session(session)  # nothing new: nothing written
    assert document_writes(recording) == []


async def test_loaded_session_resaves_only_its_head(
    storage: SessionStorage, recording: RecordingStore
) -> None:
    session = conversation(5)
    await storage.save_session(session)
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None
    recording.writes.clear()
    loaded.status = "archived"
    await storage.save_session(loaded)
    assert document_writes(recording) == [("compare_and_set", session_key(session.session_id))]


async def test_a_changed_message_list_is_saved_as_it_is(storage: SessionStorage) -> None:
    session = conversation(3)
    await storage.save_session(session)
    session.messages = session.messages[:1]  # not an append: two saved messages removed
    session.add_message("assistant", "after the rewrite")
    await storage.save_session(session)
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["message 0 ✓ 😀", "after the rewrite"]
    assert loaded.message_count == session.message_count == 2


async def test_save_keeps_messages_another_writer_stored(storage: SessionStorage) -> None:
    session = conversation(2)
    await storage.save_session(session)
    first = await storage.load_session(session.session_id)
    second = await storage.load_session(session.session_id)
    assert first is not None and second is not None
    first.add_message("user", "from the first writer")
    second.add_message("user", "from the second writer")
    await storage.save_session(first)
    await storage.save_session(second)
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None
    contents = [m.content for m in loaded.messages]
    assert contents[:2] == ["message 0 ✓ 😀", "message 1 ✓ 😀"]
    assert sorted(contents[2:]) == ["from the first writer", "from the second writer"]
    assert loaded.message_count == 4  # recounted from what is stored


async def test_two_storages_each_store_the_whole_session(
    storage: SessionStorage, recording: RecordingStore
) -> None:
    session = conversation(3)
    await storage.save_session(session)
    await storage.delete_session(session.session_id)
    other = SessionStorage(recording)  # another storage on the same store
    await other.save_session(session)  # it has stored nothing of this session: writes all
    assert await other.load_session(session.session_id) == session


# -------------------------------------------------------------------- append and paging

async def test_append_message_writes_one_message_and_the_head(
    storage: SessionStorage, recording: RecordingStore
) -> None:
    session = conversation(40)
    await storage.save_session(session)
    recording.writes.clear()
    message = ChatMessage.create(session.session_id, "assistant", "appended")
    assert await storage.append_message(session.session_id, message) is None
    assert document_writes(recording) == appended(
        recording, session_key(session.session_id),
        f"message:{session.session_id}:{message.message_id}")
    head = (await storage.list_sessions())[0]
    assert head.message_count == 41
    assert head.updated_at == message.created_at
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None and loaded.messages[-1] == message


async def test_append_to_a_missing_session_stores_nothing(storage: SessionStorage) -> None:
    message = ChatMessage.create("ghost", "user", "hello?")
    with pytest.raises(SessionNotFoundError, match="ghost"):
        await storage.append_message("ghost", message)
    assert await stored_keys(storage) == [INDEX_STATE_KEY]  # a new store: index complete


async def test_message_of_another_session_is_refused(storage: SessionStorage) -> None:
    session = conversation(1)
    await storage.save_session(session)
    stray = ChatMessage.create("other-session", "user", "misplaced")
    with pytest.raises(ValidationError, match="session_id"):
        await storage.append_message(session.session_id, stray)
    session.messages.append(stray)
    with pytest.raises(ValidationError, match="session_id"):
        await storage.save_session(session)
    assert len(await stored_keys(storage, message_prefix(session.session_id))) == 1


async def test_last_messages_loads_the_latest_in_order(storage: SessionStorage) -> None:
    session = conversation(30)
    await storage.save_session(session)
    loaded = await storage.load_session(session.session_id, last_messages=5)
    assert loaded is not None
    assert loaded.messages == session.messages[-5:]
    assert loaded.message_count == 30
    empty = await storage.load_session(session.session_id, last_messages=0)
    assert empty is not None and empty.messages == [] and empty.message_count == 30
    # saving a partly loaded session keeps the rest of its history
    loaded.add_message("user", "new")
    await storage.save_session(loaded)
    full = await storage.load_session(session.session_id)
    assert full is not None and len(full.messages) == 31 and full.message_count == 31


async def test_load_messages_pages_by_message_id(storage: SessionStorage) -> None:
    session = conversation(25)
    await storage.save_session(session)
    sid, ids = session.session_id, [m.message_id for m in session.messages]

    async def page(**kwargs: Any) -> list[str]:
        return [m.message_id for m in await storage.load_messages(sid, **kwargs)]

    assert await page() == ids
    assert await page(limit=10) == ids[-10:]
    assert await page(limit=10, before=ids[-10]) == ids[5:15]
    assert await page(before=ids[3]) == ids[:3]
    assert await page(after=ids[20]) == ids[21:]
    assert await page(after=ids[2], limit=4) == ids[3:7]
    assert await page(after=ids[2], before=ids[9]) == ids[3:9]
    assert await page(after=ids[2], before=ids[9], limit=2) == ids[7:9]
    assert await page(limit=0) == []
    # paging backwards through the whole history, 7 at a time, reads every message once
    collected: list[str] = []
    before = None
    while chunk := await page(limit=7, before=before):
        collected = chunk + collected
        before = chunk[0]
    assert collected == ids
    assert await storage.load_messages("no-such-session", limit=3) == []
    with pytest.raises(InvalidValueError):
        await storage.load_messages(sid, limit=-1)


# -------------------------------------------------------------------- listing

async def test_list_sessions_newest_first_heads_only(storage: SessionStorage) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    made = []
    for i, status in enumerate(["active", "archived", "active", "expired", "active"]):
        session = conversation(2)
        session.status = status
        session.updated_at = base + timedelta(hours=(i * 7) % 5)  # not in creation order
        await storage.save_session(session)
        made.append(session)
    listed = await storage.list_sessions()
    expected = sorted(made, key=lambda s: s.updated_at, reverse=True)
    assert [s.session_id for s in listed] == [s.session_id for s in expected]
    assert all(s.messages == [] and s.message_count == 2 for s in listed)
    active = await storage.list_sessions(status="active")
    assert [s.session_id for s in active] == [s.session_id for s in expected
                                              if s.status == "active"]
    assert [s.session_id for s in await storage.list_sessions(limit=2)] == \
        [s.session_id for s in expected[:2]]
    assert await storage.list_sessions(limit=0) == []
    assert await storage.list_sessions(status="archived", limit=1) == \
        [s for s in listed if s.status == "archived"]
    with pytest.raises(ValidationError, match="status"):
        await storage.list_sessions(status="deleted")
    with pytest.raises(InvalidValueError):
        await storage.list_sessions(limit=-5)
    assert sorted([s.session_id async for s in storage.iter_sessions(status="active")]) == \
        sorted(s.session_id for s in made if s.status == "active")


async def test_delete_session_removes_its_messages(storage: SessionStorage) -> None:
    keep, drop = conversation(3), conversation(4)
    await storage.save_session(keep)
    await storage.save_session(drop)
    assert await storage.delete_session(drop.session_id) is True
    assert await storage.load_session(drop.session_id) is None
    assert await stored_keys(storage, message_prefix(drop.session_id)) == []
    assert await storage.delete_session(drop.session_id) is False
    assert await storage.load_session(keep.session_id) == keep
    assert [s.session_id for s in await storage.list_sessions()] == [keep.session_id]


# -------------------------------------------------------------------- validation

@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: setattr(s, "status", "deleted"), "status"),
        (lambda s: setattr(s.messages[1], "role", "robot"), "role"),
        (lambda s: setattr(s, "created_at", "yesterday"), "created_at"),
        (lambda s: setattr(s.messages[0], "created_at", datetime(2026, 1, 1)), "created_at"),
        (lambda s: setattr(s, "updated_at", datetime(2026, 1, 1)), "updated_at"),
        (lambda s: setattr(s.messages[1], "content", 42), "content"),
        (lambda s: setattr(s, "message_count", -1), "message_count"),
        (lambda s: s.metadata.update(bad=float("nan")), "metadata/bad"),
    ],
    ids=["unknown_status", "unknown_role", "bad_timestamp", "naive_message_time",
         "naive_session_time", "content_not_text", "negative_count", "nan_metadata"],
)
async def test_invalid_session_stores_nothing(
    storage: SessionStorage, change: Callable[[ChatSession], None], field: str
) -> None:
    session = conversation(3)
    change(session)
    with pytest.raises(ValidationError) as raised:
        await storage.save_session(session)
    assert raised.value.path == field
    assert await stored_keys(storage) == []
    # an invalid new message on a stored session leaves the stored one as it was
    good = conversation(2)
    await storage.save_session(good)
    before = await stored_keys(storage)
    good.add_message("user", "fine")
    good.add_message("robot", "not a role")
    with pytest.raises(ValidationError, match="role"):
        await storage.save_session(good)
    assert await stored_keys(storage) == before
    with pytest.raises(ValidationError, match="role"):
        await storage.append_message(good.session_id,
                                     ChatMessage.create(good.session_id, "robot", "x"))
    assert await stored_keys(storage) == before


# -------------------------------------------------------------------- files

def file_record(name: str, expires_in: timedelta) -> UploadedFileRecord:
    record = UploadedFileRecord.create(f"files/{name}", f"https://files.invalid/{name}", name,
                                       1234, "text/plain", metadata={"n": name})
    record.expires_at = record.uploaded_at + expires_in
    return record


async def test_file_records(storage: SessionStorage) -> None:
    fresh = [file_record(f"fresh{i}", timedelta(hours=1)) for i in range(3)]
    stale = [file_record(f"stale{i}", timedelta(seconds=-1)) for i in range(2)]
    for record in [*fresh, *stale]:
        assert await storage.save_file_record(record) is True
    assert await storage.load_file_record(fresh[0].file_id) == fresh[0]
    assert await storage.load_file_record("missing") is None
    listed = await storage.list_file_records()
    assert listed == sorted([*fresh, *stale], key=lambda r: r.file_id, reverse=True)
    assert len(await storage.list_file_records(limit=2)) == 2
    stats = await storage.statistics()
    assert (stats["total_files"], stats["expired_files"]) == (5, 2)
    assert await storage.delete_expired_files() == 2
    assert await storage.delete_expired_files() == 0
    assert {r.file_id for r in await storage.list_file_records()} == {r.file_id for r in fresh}
    bad = file_record("bad", timedelta(hours=1))
    bad.size = -3
    with pytest.raises(ValidationError, match="size"):
        await storage.save_file_record(bad)
    assert await storage.load_file_record(bad.file_id) is None


async def test_statistics(storage: SessionStorage) -> None:
    for status, turns in [("active", 2), ("active", 3), ("archived", 1)]:
        session = conversation(turns)
        session.status = status
        await storage.save_session(session)
    stats = await storage.statistics()
    assert stats["total_sessions"] == 3
    assert stats["sessions_by_status"] == {"active": 2, "archived": 1, "expired": 0}
    assert stats["total_messages"] == 6


async def test_a_corrupt_head_is_an_error_not_a_missing_session(
    storage: SessionStorage
) -> None:
    session = conversation(1)
    await storage.save_session(session)
    # Damage the head below validation; through the cache where there is one, since every
    # writer of a cached store goes through its cache (a listing reads heads with get_many).
    below = storage.store
    while isinstance(below, StoreWrapper) and not isinstance(below, CachedStore):
        below = below.inner
    await below.put(session_key(session.session_id),
                    orjson.dumps({"kind": "session", "v": 1, "status": "active"}))
    with pytest.raises(ValidationError):
        await storage.load_session(session.session_id)
    with pytest.raises(ValidationError):
        await storage.list_sessions()


# -------------------------------------------------------------------- two writers at once

WRITES_PER_WRITER = 40


async def _write(storage: SessionStorage, session_id: str, writer: str, mode: str) -> None:
    if mode == "append":
        for i in range(WRITES_PER_WRITER):
            await storage.append_message(
                session_id, ChatMessage.create(session_id, "user", f"{writer}:{i}"))
    else:
        session = await storage.load_session(session_id)
        assert session is not None
        for i in range(WRITES_PER_WRITER):
            session.add_message("assistant", f"{writer}:{i}")
            await storage.save_session(session)


def _writer_process(make: Callable[[str], KVStore], namespace: str, session_id: str,
                    writer: str, mode: str, barrier: Any) -> None:
    async def run() -> None:
        async with SessionStorage(make(namespace)) as storage:
            await storage.initialize()
            barrier.wait(timeout=60)
            await _write(storage, session_id, writer, mode)

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["append", "save"])
def test_two_writers_at_once_lose_nothing(store_factory: StoreFactory, mode: str) -> None:
    """Two real processes on durable stores (two tasks on in-process ones) write to one
    session at once: every message is kept, each writer's in its order, and a full load
    counts them all."""
    session = ChatSession.create("gemini-2.5-flash")

    async def prepare() -> None:
        async with SessionStorage(store_factory.new()) as storage:
            await storage.save_session(session)

    async def check() -> None:
        async with SessionStorage(store_factory.new()) as storage:
            loaded = await storage.load_session(session.session_id)
            assert loaded is not None
            contents = [m.content for m in loaded.messages]
            for writer in ("a", "b"):
                mine = [c for c in contents if c.startswith(writer + ":")]
                assert mine == [f"{writer}:{i}" for i in range(WRITES_PER_WRITER)]
            assert len(contents) == loaded.message_count == 2 * WRITES_PER_WRITER

    async def in_one_process() -> None:
        async with SessionStorage(store_factory.new()) as storage:
            await storage.save_session(session)
            await asyncio.gather(*(_write(storage, session.session_id, w, mode)
                                   for w in ("a", "b")))
            loaded = await storage.load_session(session.session_id)
            assert loaded is not None and len(loaded.messages) == 2 * WRITES_PER_WRITER

    try:
        if not store_factory.persistent:
            asyncio.run(in_one_process())
            return
        asyncio.run(prepare())
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(2)
        processes = [
            context.Process(target=_writer_process, args=(
                store_factory.make, store_factory.namespace, session.session_id, writer, mode,
                barrier))
            for writer in ("a", "b")
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
            assert process.exitcode == 0, f"writer process failed ({process.exitcode})"
        asyncio.run(check())
    finally:
        if store_factory.cleanup is not None:
            asyncio.run(store_factory.cleanup())


# -------------------------------------------------------------------- the fast read path

def _valid_message_document() -> dict[str, Any]:
    return message_to_document(ChatMessage.create("s1", "assistant", "hi", {"k": [1]}))


_MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "unchanged": lambda d: None,
    "whole_seconds": lambda d: d.update(created_at="2026-11-21T10:00:00Z"),
    "offset_form": lambda d: d.update(created_at="2026-11-21T10:00:00+00:00"),
    "three_digit_fraction": lambda d: d.update(created_at="2026-11-21T10:00:00.123Z"),
    "comma_fraction": lambda d: d.update(created_at="2026-11-21T10:00:00,123456Z"),
    "other_zone": lambda d: d.update(created_at="2026-11-21T10:00:00+01:00"),
    "no_zone": lambda d: d.update(created_at="2026-11-21T10:00:00.123456"),
    "week_date": lambda d: d.update(created_at="2026-W47-6T10:00:00Z"),
    "space_separator": lambda d: d.update(created_at="2026-11-21 10:00:00Z"),
    "hour_24": lambda d: d.update(created_at="2026-11-21T24:00:00Z"),
    "feb_30": lambda d: d.update(created_at="2026-02-30T10:00:00Z"),
    "arabic_digits": lambda d: d.update(created_at="٢٠٢٦-11-21T10:00:00Z"),
    "timestamp_number": lambda d: d.update(created_at=1764000000),
    "unknown_role": lambda d: d.update(role="robot"),
    "role_not_text": lambda d: d.update(role=["user"]),
    "content_not_text": lambda d: d.update(content=None),
    "metadata_list": lambda d: d.update(metadata=[]),
    "empty_id": lambda d: d.update(message_id=""),
    "long_id": lambda d: d.update(message_id="x" * 201),
    "longest_id": lambda d: d.update(message_id="x" * 200),
    "session_not_text": lambda d: d.update(session_id=7),
    "version_true": lambda d: d.update(v=True),
    "version_2": lambda d: d.update(v=2),
    "version_float": lambda d: d.update(v=1.0),
    "kind_session": lambda d: d.update(kind="session"),
    "extra_field": lambda d: d.update(extra=1),
    "missing_field": lambda d: d.pop("metadata"),
    "swapped_field": lambda d: (d.pop("metadata"), d.update(meta={})),
    "fields_reordered": lambda d: (lambda items: (d.clear(), d.update(reversed(items))))(
        list(d.items())),
    "accented_id_200": lambda d: d.update(message_id="é" * 200),
    "accented_id_201": lambda d: d.update(message_id="é" * 201),
    "kind_null": lambda d: d.update(kind=None),
    "metadata_null": lambda d: d.update(metadata=None),
    "metadata_nested": lambda d: d.update(metadata={"a": {"b": [1, 2.5, None, True, "é"]}}),
    "content_escapes": lambda d: d.update(content='quote " backslash \\ tab \t é 𝄞'),
}


def full_read(document: Any) -> ChatMessage | None:
    """The message the full read path makes of ``document`` (None: it refuses it)."""
    try:
        validate_document(document)
        return document_to_message(document)
    except ValidationError:
        return None


@pytest.mark.parametrize("name", sorted(_MUTATIONS))
def test_fast_read_path_accepts_only_what_the_schema_accepts(name: str) -> None:
    document = _valid_message_document()
    _MUTATIONS[name](document)
    fast = message_from_document(orjson.loads(orjson.dumps(document)))
    full = full_read(document)
    if fast is not None:
        assert full is not None and fast == full, "the fast path accepted an invalid document"
        assert list(vars(fast)) == [f.name for f in dataclasses.fields(ChatMessage)]
    valid = orjson.dumps(_valid_message_document())
    page = [("message:s1:a", valid), ("message:s1:b", orjson.dumps(document)),
            ("message:s1:c", valid)]
    batch = messages_from_page(page)  # a page read at once: all or nothing
    if batch is not None:
        assert full is not None and batch[1] == full, "a page took an invalid document"
        assert batch[0] == batch[2] == message_from_document(orjson.loads(valid))
    if name in ("unchanged", "whole_seconds", "longest_id"):
        assert fast is not None, "the fast path must take what this release writes"


@pytest.mark.parametrize("value", [
    # the same field twice: orjson keeps the last, so the full path decides
    b'{"kind":"message","kind":"session","v":1,"message_id":"a","session_id":"s1",'
    b'"role":"user","content":"","created_at":"2026-11-21T10:00:00Z","metadata":{}}',
    b'{"kind":"session","kind":"message","v":1,"message_id":"a","session_id":"s1",'
    b'"role":"user","content":"","created_at":"2026-11-21T10:00:00Z","metadata":{}}',
    # an integer beyond 64 bits: orjson reads it as a float, and so does every read
    b'{"kind":"message","v":1,"message_id":"a","session_id":"s1","role":"user",'
    b'"content":"","created_at":"2026-11-21T10:00:00Z","metadata":{"n":100000000000000000000}}',
    b'{"kind":"message","v":1,"message_id":"a","session_id":"s1","role":"user",'
    b'"content":"\\ud800","created_at":"2026-11-21T10:00:00Z","metadata":{}}',
    b'{"kind":"message","v":1,"message_id":"a","session_id":"s1","role":"user",'
    b'"content":"","created_at":"2026-11-21T10:00:00Z","metadata":{}} x',
])
def test_fast_read_path_reads_stored_bytes_as_the_full_path(value: bytes) -> None:
    """What the fast path takes from raw bytes is what the full path reads from them."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        document = None
    fast = message_from_document(document)
    full = full_read(document)
    if fast is not None:
        assert full is not None and fast == full
        assert fast.metadata == full.metadata
        assert [type(v) for v in fast.metadata.values()] == [
            type(v) for v in full.metadata.values()]


async def test_documents_off_the_fast_path_still_load(storage: SessionStorage) -> None:
    """Older-looking but valid documents (e.g. an offset instead of Z) take the full path."""
    session = conversation(2)
    await storage.save_session(session)
    innermost = storage.store
    while isinstance(innermost, StoreWrapper):
        innermost = innermost.inner
    first = session.messages[0]
    document = message_to_document(first)
    document["created_at"] = document["created_at"].replace("Z", "+00:00")
    await innermost.put(f"message:{session.session_id}:{first.message_id}", orjson.dumps(document))
    loaded = await storage.load_session(session.session_id)
    assert loaded == session
    document["role"] = "robot"
    await innermost.put(f"message:{session.session_id}:{first.message_id}", orjson.dumps(document))
    with pytest.raises(ValidationError, match="role"):
        await storage.load_session(session.session_id)
