"""Editing stored messages (issue 14, items 1 and 4) on every backend in tests/backends:
append several, read one, update, delete, pop, clear, time windows, ``save_session`` edits
and deletions, and the damaged-data policy. Two processes popping and appending on one
session are in tests/reliability/test_message_races.py."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from kvsessions import MessageNotFoundError
from kvsessions.documents.keys import message_key, message_prefix, session_key
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import ConfigError, InvalidValueError, ValidationError
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.sessions.storage import SessionNotFoundError, SessionStorage
from kvsessions.testing import StoreFactory
from kvsessions.wrappers.base import StoreWrapper
from kvsessions.wrappers.cache import CachedStore
from tests.backends import store_of
from tests.test_storage import RecordingStore, document_writes


class ScanCounting(RecordingStore):
    """Also counts the message documents scans read from the store."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.scanned = 0

    async def _scan(self, key_range: KeyRange, reverse: bool,
                    limit: int | None = None) -> AsyncIterator[list[tuple[str, bytes]]]:
        self.calls.append("scan")
        async for page in super()._scan(key_range, reverse, limit):
            self.scanned += sum(key.startswith("message:") for key, _ in page)
            yield page


@pytest.fixture
async def recording(store_factory: StoreFactory) -> AsyncIterator[ScanCounting]:
    async with store_of(store_factory, ScanCounting) as store:
        yield store


@pytest.fixture
async def storage(recording: ScanCounting) -> AsyncIterator[SessionStorage]:
    storage = SessionStorage(recording)
    await storage.initialize()
    yield storage
    await storage.close()


@pytest.fixture
async def plain(store_factory: StoreFactory) -> AsyncIterator[SessionStorage]:
    """A storage right on the backend's store: a ValidatingStore given to SessionStorage is
    the one it reads through (wrapped in another store, it would check every scan itself,
    before any damaged-data policy sees the document)."""
    storage = SessionStorage(store_factory.new())
    try:
        await storage.initialize()
        yield storage
    finally:
        await storage.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()


def uuid7_at(moment: datetime) -> str:
    """A UUIDv7 whose time is ``moment`` (ids of messages written at another time)."""
    ms = int(moment.timestamp() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62)
             | (rand & ((1 << 62) - 1)))
    return str(uuid.UUID(int=value))


def message_at(session_id: str, moment: datetime, content: str,
               id_moment: datetime | None = None) -> ChatMessage:
    return ChatMessage(uuid7_at(id_moment or moment), session_id, "user", content, moment, {})


async def stored_session(storage: SessionStorage, turns: int = 3) -> ChatSession:
    session = ChatSession.create("gemini-2.5-flash", metadata={"topic": "edits"})
    for i in range(turns):
        session.add_message("user" if i % 2 == 0 else "assistant", f"m{i}", metadata={"i": i})
    assert await storage.save_session(session)
    return session


async def head(storage: SessionStorage, session_id: str) -> dict[str, object]:
    value = await storage.store.get(session_key(session_id))
    assert value is not None
    document: dict[str, object] = orjson.loads(value)
    return document


async def count_and_documents(storage: SessionStorage, session_id: str) -> tuple[object, int]:
    keys = await storage.store.keys(message_prefix(session_id))
    return (await head(storage, session_id))["message_count"], len(keys)


async def contents(storage: SessionStorage, session_id: str) -> list[str]:
    return [m.content for m in await storage.load_messages(session_id)]


def below_validation(storage: SessionStorage) -> KVStore:
    """The store under every wrapper but a cache (every writer of a cached store goes through
    its cache), to plant what validation would refuse."""
    below = storage.store
    while isinstance(below, StoreWrapper) and not isinstance(below, CachedStore):
        below = below.inner
    return below


async def plant_damaged(storage: SessionStorage, session_id: str,
                        moment: datetime | None = None) -> tuple[str, str]:
    """A counted message (the latest, unless ``moment`` says when) overwritten below
    validation by a document the schema refuses; its id and key."""
    message = message_at(session_id, moment or datetime.now(UTC) + timedelta(seconds=1),
                         "to be damaged")
    await storage.append_message(session_id, message)
    key = message_key(session_id, message.message_id)
    await below_validation(storage).put(key, orjson.dumps(
        {"kind": "message", "v": 1, "role": "robot", "content": 7}))
    return message.message_id, key


# -------------------------------------------------------------------- append several

async def test_append_messages_stores_all_and_counts_once(storage: SessionStorage) -> None:
    session = await stored_session(storage, 1)
    sid = session.session_id
    batch = [ChatMessage.create(sid, "user", f"b{i}") for i in range(5)]
    await storage.append_messages(sid, batch)
    assert await contents(storage, sid) == ["m0", "b0", "b1", "b2", "b3", "b4"]
    assert await count_and_documents(storage, sid) == (6, 6)
    stored_head = await head(storage, sid)
    assert stored_head["updated_at"] == batch[-1].created_at.isoformat().replace("+00:00", "Z")
    await storage.append_messages(sid, [*batch[2:], ChatMessage.create(sid, "user", "b5")])
    assert await count_and_documents(storage, sid) == (7, 7)  # a retry counts only b5
    await storage.append_messages(sid, [])  # nothing to do


async def test_append_messages_refuses_before_writing(storage: SessionStorage,
                                                      recording: ScanCounting) -> None:
    session = await stored_session(storage, 1)
    sid = session.session_id
    recording.writes.clear()
    twice = ChatMessage.create(sid, "user", "x")
    with pytest.raises(ValidationError, match="have the id"):
        await storage.append_messages(sid, [twice, ChatMessage.create(sid, "user", "y"), twice])
    bad = ChatMessage.create(sid, "robot", "x")
    with pytest.raises(ValidationError, match="role"):
        await storage.append_messages(sid, [ChatMessage.create(sid, "user", "ok"), bad])
    with pytest.raises(SessionNotFoundError):
        await storage.append_messages("no-such-session",
                                      [ChatMessage.create("no-such-session", "user", "x")])
    assert document_writes(recording) == []


# -------------------------------------------------------------------- read, update one

async def test_load_message_reads_one_by_id(storage: SessionStorage) -> None:
    session = await stored_session(storage)
    first = session.messages[0]
    assert await storage.load_message(session.session_id, first.message_id) == first
    assert await storage.load_message(session.session_id, "no-such-message") is None
    assert await storage.load_message("other-session", first.message_id) is None
    with pytest.raises(InvalidValueError):
        await storage.load_message(session.session_id, "")


async def test_update_message_changes_one_message_atomically(
        storage: SessionStorage, recording: ScanCounting) -> None:
    session = await stored_session(storage)
    sid, target = session.session_id, session.messages[1]
    before = await head(storage, sid)
    recording.writes.clear()
    updated = await storage.update_message(sid, target.message_id, content="streamed more",
                                           metadata={"done": True})
    assert updated.content == "streamed more" and updated.metadata == {"done": True}
    assert updated.role == target.role and updated.created_at == target.created_at
    assert await storage.load_message(sid, target.message_id) == updated
    assert document_writes(recording) == [("compare_and_set", message_key(sid, target.message_id)),
                                          ("compare_and_set", session_key(sid))]
    after = await head(storage, sid)
    assert after["message_count"] == 3
    assert (datetime.fromisoformat(str(after["updated_at"]))
            > datetime.fromisoformat(str(before["updated_at"])))
    recording.writes.clear()
    assert await storage.update_message(sid, target.message_id, role="assistant") == updated
    assert document_writes(recording) == []  # nothing changed: nothing written
    with pytest.raises(ValidationError, match="role"):
        await storage.update_message(sid, target.message_id, role="robot")
    assert await storage.load_message(sid, target.message_id) == updated
    with pytest.raises(MessageNotFoundError):
        await storage.update_message(sid, "no-such-message", content="x")
    with pytest.raises(SessionNotFoundError):
        await storage.update_message("no-such-session", target.message_id, content="x")
    assert issubclass(MessageNotFoundError, LookupError)


# -------------------------------------------------------------------- delete, pop, clear

async def test_delete_message_counts_it_out_once(storage: SessionStorage) -> None:
    session = await stored_session(storage)
    sid, target = session.session_id, session.messages[0]
    assert await storage.delete_message(sid, target.message_id) is True
    assert await storage.delete_message(sid, target.message_id) is False
    assert await contents(storage, sid) == ["m1", "m2"]
    assert await count_and_documents(storage, sid) == (2, 2)
    assert await storage.delete_message("no-such-session", target.message_id) is False


async def test_pop_message_takes_the_latest_until_none(storage: SessionStorage) -> None:
    session = await stored_session(storage)
    sid = session.session_id
    popped = [await storage.pop_message(sid) for _ in range(4)]
    assert popped[:3] == session.messages[::-1] and popped[3] is None
    assert await count_and_documents(storage, sid) == (0, 0)
    assert await storage.load_session(sid) is not None  # the session stays
    assert await storage.pop_message("no-such-session") is None


async def test_concurrent_pops_never_return_one_message_twice(storage: SessionStorage) -> None:
    session = await stored_session(storage, 0)
    sid = session.session_id
    await storage.append_messages(sid, [ChatMessage.create(sid, "user", f"p{i}")
                                        for i in range(12)])
    results = await asyncio.gather(*(storage.pop_message(sid) for _ in range(16)))
    popped = [m.content for m in results if m is not None]
    assert sorted(popped) == sorted(f"p{i}" for i in range(12))
    assert await count_and_documents(storage, sid) == (0, 0)


async def test_update_and_pop_are_one_read_and_one_transaction(
        storage: SessionStorage, recording: ScanCounting) -> None:
    """Where the store changes several keys in one transaction, an update and a pop cost
    what an append does: the head and the message read together, then one write."""
    if not recording.atomic_compare_and_set_with:
        pytest.skip("the store has no multi-key transaction: updates and pops take steps")
    session = await stored_session(storage)
    sid = session.session_id
    recording.calls.clear()
    await storage.update_message(sid, session.messages[0].message_id, content="edited")
    assert recording.calls == ["get_many", "compare_and_set_with"]
    recording.calls.clear()
    assert await storage.pop_message(sid) == session.messages[-1]
    assert recording.calls == ["get_and_last", "compare_and_set_with"]
    assert await count_and_documents(storage, sid) == (2, 2)


async def test_pops_and_deletes_of_one_message_count_it_out_once(
        storage: SessionStorage) -> None:
    session = await stored_session(storage, 0)
    sid = session.session_id
    messages = [ChatMessage.create(sid, "user", f"p{i}") for i in range(12)]
    await storage.append_messages(sid, messages)
    results = await asyncio.gather(
        *(storage.pop_message(sid) for _ in range(6)),
        *(storage.delete_message(sid, message.message_id) for message in messages[6:]))
    popped = {m.message_id for m in results[:6] if isinstance(m, ChatMessage)}
    deleted = {m.message_id for m, done in zip(messages[6:], results[6:], strict=True) if done}
    assert not popped & deleted
    assert await count_and_documents(storage, sid) == (12 - len(popped | deleted),) * 2


async def test_clear_messages_keeps_the_session(storage: SessionStorage) -> None:
    session = await stored_session(storage, 4)
    sid = session.session_id
    assert await storage.clear_messages(sid) == 4
    assert await storage.clear_messages(sid) == 0
    loaded = await storage.load_session(sid)
    assert loaded is not None and loaded.messages == [] and loaded.message_count == 0
    assert loaded.metadata == {"topic": "edits"} and loaded.status == "active"
    await storage.append_message(sid, ChatMessage.create(sid, "user", "again"))
    assert await count_and_documents(storage, sid) == (1, 1)
    assert await storage.clear_messages("no-such-session") == 0


# -------------------------------------------------------------------- time windows

async def test_time_window_reads_only_its_range(storage: SessionStorage,
                                                recording: ScanCounting) -> None:
    session = await stored_session(storage, 0)
    sid = session.session_id
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    await storage.append_messages(sid, [message_at(sid, start + timedelta(minutes=i), f"t{i}")
                                        for i in range(300)])
    # created_at inside the window, id time outside (by more than the slack) or the reverse
    await storage.append_messages(sid, [
        message_at(sid, start + timedelta(minutes=100, seconds=30), "late id",
                   id_moment=start + timedelta(minutes=250)),
        message_at(sid, start + timedelta(minutes=250), "early id",
                   id_moment=start + timedelta(minutes=100, seconds=30))])
    since, until = start + timedelta(minutes=100), start + timedelta(minutes=110)
    recording.scanned = 0
    window = await storage.load_messages(sid, since=since, until=until)
    assert [m.content for m in window] == [f"t{i}" for i in range(100, 110)]
    assert recording.scanned <= 2 * 32 + 12  # the range and a chunk, not 302 documents
    latest = await storage.load_messages(sid, since=since, until=until, limit=3)
    assert [m.content for m in latest] == ["t107", "t108", "t109"]
    first = await storage.load_messages(sid, since=since, after=window[1].message_id, limit=2)
    assert [m.content for m in first] == ["t102", "t103"]
    assert [m.content for m in await storage.load_messages(sid, since=start + timedelta(
        minutes=298))] == ["t298", "t299"]
    assert [m.content for m in await storage.load_messages(sid, until=start + timedelta(
        minutes=2))] == ["t0", "t1"]
    with pytest.raises(InvalidValueError, match="timezone-aware"):
        await storage.load_messages(sid, since=datetime(2026, 1, 1))


# -------------------------------------------------------------------- save_session

async def test_save_writes_edits_and_deletions_only(storage: SessionStorage,
                                                    recording: ScanCounting) -> None:
    session = await stored_session(storage, 4)
    sid = session.session_id
    loaded = await storage.load_session(sid)
    assert loaded is not None and not storage.has_changes(loaded)
    loaded.messages[1].content = "corrected"
    loaded.messages[2].metadata["tokens"] = 12  # changed in place
    assert storage.has_changes(loaded)
    recording.writes.clear()
    assert await storage.save_session(loaded)
    keys = [message_key(sid, m.message_id) for m in loaded.messages]
    assert sorted(document_writes(recording)) == sorted(
        [("compare_and_set", keys[1]), ("compare_and_set", keys[2]),
         ("compare_and_set", session_key(sid))])
    assert not storage.has_changes(loaded)
    again = await storage.load_session(sid)
    assert again is not None and again.messages == loaded.messages
    assert again.updated_at == loaded.updated_at > session.updated_at
    gone = loaded.messages.pop(0)
    recording.writes.clear()
    assert await storage.save_session(loaded)
    assert await storage.load_message(sid, gone.message_id) is None
    assert await count_and_documents(storage, sid) == (3, 3) and loaded.message_count == 3
    recording.writes.clear()
    assert await storage.save_session(loaded)
    assert document_writes(recording) == []


async def test_save_never_deletes_what_the_object_never_held(storage: SessionStorage) -> None:
    session = await stored_session(storage, 4)
    sid = session.session_id
    window = await storage.load_session(sid, last_messages=2)
    assert window is not None
    await storage.append_message(sid, ChatMessage.create(sid, "user", "from elsewhere"))
    window.messages.pop(0)  # m2: held, so deleted; m0, m1 and the new one never held
    assert await storage.save_session(window)
    assert await contents(storage, sid) == ["m0", "m1", "m3", "from elsewhere"]
    assert await count_and_documents(storage, sid) == (4, 4)


async def test_an_edit_of_a_message_deleted_elsewhere_does_not_bring_it_back(
        storage: SessionStorage) -> None:
    session = await stored_session(storage, 3)
    sid = session.session_id
    loaded = await storage.load_session(sid)
    assert loaded is not None
    assert await storage.delete_message(sid, loaded.messages[2].message_id)
    loaded.messages[2].content = "edited after the delete"
    loaded.messages.pop(1)  # deleted here too
    assert await storage.save_session(loaded)
    assert await contents(storage, sid) == ["m0"]
    assert await count_and_documents(storage, sid) == (1, 1)
    assert await storage.save_session(loaded)  # still not written again
    assert await contents(storage, sid) == ["m0"]


# -------------------------------------------------------------------- damaged data

async def test_damaged_message_raises_by_default_naming_its_key(
        plain: SessionStorage) -> None:
    storage = plain
    session = await stored_session(storage, 2)
    sid = session.session_id
    _, key = await plant_damaged(storage, sid)
    for read in (storage.load_session(sid), storage.load_session(sid, last_messages=1),
                 storage.load_messages(sid, limit=1), storage.pop_message(sid)):
        with pytest.raises(ValidationError, match=key):
            await read
    assert await below_validation(storage).get(key) is not None  # a raising pop removes nothing


async def test_a_damaged_message_deep_in_a_long_page_is_found(plain: SessionStorage) -> None:
    """Pages are decoded and checked in chunks (kvsessions.sessions.message_reader): one
    damaged document past the first chunks still raises naming its key, or is the only one
    skipped."""
    storage = plain
    session = await stored_session(storage, 150)
    sid = session.session_id
    victim = session.messages[130]
    key = message_key(sid, victim.message_id)
    await below_validation(storage).put(key, orjson.dumps(
        {"kind": "message", "v": 1, "role": "robot", "content": 7}))
    with pytest.raises(ValidationError, match=key):
        await storage.load_session(sid)
    reported: list[str] = []
    skipping = SessionStorage(storage.store, on_damaged="skip", on_damaged_report=reported.append)
    loaded = await skipping.load_session(sid)
    assert loaded is not None and reported == [key]
    assert [m.message_id for m in loaded.messages] == [
        m.message_id for m in session.messages if m is not victim]


async def test_skip_leaves_damaged_messages_out_and_reports_them(
        plain: SessionStorage, caplog: pytest.LogCaptureFixture) -> None:
    storage = plain
    session = await stored_session(storage, 3)
    sid = session.session_id
    middle_id, middle = await plant_damaged(
        storage, sid, session.messages[0].created_at - timedelta(seconds=1))  # the first
    _, latest = await plant_damaged(storage, sid)
    reported: list[str] = []
    skipping = SessionStorage(storage.store, on_damaged="skip", on_damaged_report=reported.append)
    with caplog.at_level(logging.WARNING, logger="kvsessions"):
        loaded = await skipping.load_session(sid)
    assert loaded is not None and [m.content for m in loaded.messages] == ["m0", "m1", "m2"]
    assert sorted(reported) == sorted([middle, latest])
    assert any(middle in record.getMessage() for record in caplog.records)
    window = await skipping.load_messages(sid, limit=2)  # reads on past the damaged ones
    assert [m.content for m in window] == ["m1", "m2"]
    with pytest.raises(ValidationError):
        await skipping.load_session(sid, on_damaged="raise")  # per call wins
    assert [m.content for m in await storage.load_messages(sid, on_damaged="skip")] == [
        "m0", "m1", "m2"]
    assert await skipping.load_message(sid, middle_id) is None
    reported.clear()
    assert await skipping.pop_message(sid) is None  # the damaged latest is popped
    assert reported == [latest] and await below_validation(storage).get(latest) is None
    assert (await skipping.pop_message(sid)) == session.messages[2]
    assert await storage.delete_message(sid, middle_id) is True
    loaded = await storage.load_session(sid)
    assert loaded is not None and [m.content for m in loaded.messages] == ["m0", "m1"]
    assert await count_and_documents(storage, sid) == (2, 2)
    with pytest.raises(ConfigError, match="on_damaged"):
        SessionStorage(storage.store, on_damaged="ignore")
    with pytest.raises(ConfigError, match="on_damaged"):
        await storage.load_messages(sid, on_damaged="ignore")
