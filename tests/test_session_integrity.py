"""Issue 11 items 1-5 on every backend in tests/backends: keys stay injective, deletes racing
appends leave nothing behind, stale saves and shutdowns bring nothing back, counts are exact
under concurrent writers, and duplicate message ids are refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from kvsessions.documents.codec import message_to_document, session_to_document
from kvsessions.documents.keys import (
    decode_id,
    encode_id,
    file_key,
    message_key,
    message_prefix,
    session_key,
    upgrade_key_layout,
)
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import InvalidKeyError, StoreError, ValidationError
from kvsessions.migration import upgrade_storage
from kvsessions.sessions.manager import SessionManager
from kvsessions.sessions.storage import SessionNotFoundError, SessionStorage
from kvsessions.testing import StoreFactory

Pair = tuple[SessionStorage, SessionStorage]


@pytest.fixture
async def pair(store_factory: StoreFactory) -> AsyncIterator[Pair]:
    """Two storages on one namespace (two store handles where the store shares data)."""
    first = store_factory.new()
    second = store_factory.new() if store_factory.persistent else first
    storages = (SessionStorage(first), SessionStorage(second))
    for storage in storages:
        await storage.initialize()
    try:
        yield storages
    finally:
        for storage in storages:
            await storage.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()


def session_with(session_id: str, *contents: str,
                 message_ids: tuple[str, ...] | None = None) -> ChatSession:
    session = ChatSession.create("m")
    session.session_id = session_id
    for index, content in enumerate(contents):
        message = session.add_message("user", content)
        message.session_id = session_id
        if message_ids is not None:
            message.message_id = message_ids[index]
    return session


async def stored_keys(storage: SessionStorage, prefix: str = "") -> list[str]:
    return await storage.store.keys(prefix)


async def assert_exact(storage: SessionStorage, session_id: str) -> int:
    """The head's count equals the messages stored; returns it."""
    heads = {s.session_id: s for s in await storage.list_sessions(limit=1000)}
    loaded = await storage.load_session(session_id)
    assert loaded is not None and session_id in heads
    stored = len(await stored_keys(storage, message_prefix(session_id)))
    assert heads[session_id].message_count == stored == len(loaded.messages)
    return stored


async def assert_gone(storage: SessionStorage, session_id: str) -> None:
    assert await storage.load_session(session_id) is None
    assert session_id not in {s.session_id for s in await storage.list_sessions(limit=1000)}
    assert await stored_keys(storage, message_prefix(session_id)) == []
    assert await storage.store.get(session_key(session_id)) is None


# -------------------------------------------------------------------- item 1: injective keys

def test_ids_are_encoded_only_where_needed() -> None:
    assert session_key("abc-1") == "session:abc-1"  # keys of earlier releases stay valid
    assert message_key("s1", "m1") == "message:s1:m1" and file_key("f") == "file:f"
    assert message_prefix("team") == "message:team:"
    assert message_prefix("team:42") == "message:team%3A42:"
    assert session_key("a%3Ab") == "session:a%253Ab" != session_key("a:b")
    for identifier in ("a:b", "%", "%3A", "%253A", "a\x00b", ":::", "x%y:z", "é:😀"):
        assert decode_id(encode_id(identifier)) == identifier
        assert ":" not in encode_id(identifier) and "\x00" not in encode_id(identifier)


async def test_ids_with_colons_never_share_or_cross_keys(pair: Pair) -> None:
    storage, _ = pair
    team = session_with("team", "team's own")
    team42 = session_with("team:42", "of team:42")
    crossed = session_with("x", "x's message", message_ids=("y:z",))
    crossing = session_with("x:y", "x:y's message", message_ids=("z",))
    percent = session_with("a%3Ab", "percent")
    colon = session_with("a:b", "colon")
    for session in (team, team42, crossed, crossing, percent, colon):
        assert await storage.save_session(session) is True
    for session in (team, team42, crossed, crossing, percent, colon):
        loaded = await storage.load_session(session.session_id)
        assert loaded is not None
        assert [m.content for m in loaded.messages] == [m.content for m in session.messages]
        assert loaded.message_count == 1
        page = await storage.load_messages(session.session_id, limit=5)
        assert [m.message_id for m in page] == [m.message_id for m in session.messages]
    assert await storage.delete_session("team") is True
    assert await storage.load_session("team") is None
    survivor = await storage.load_session("team:42")
    assert survivor is not None and [m.content for m in survivor.messages] == ["of team:42"]
    assert await storage.delete_session("x") is True
    survivor = await storage.load_session("x:y")
    assert survivor is not None and [m.content for m in survivor.messages] == [
        "x:y's message"]
    listed = {s.session_id: s.message_count for s in await storage.list_sessions()}
    assert listed == {"team:42": 1, "x:y": 1, "a%3Ab": 1, "a:b": 1}


async def test_earlier_layout_is_reported_then_upgraded(pair: Pair) -> None:
    """An earlier release wrote ids into keys as they were: such a session is not read as
    missing but named with the command that moves it; afterwards it reads normally."""
    storage, _ = pair
    legacy = session_with("team:42", "hello", "again")
    plain = session_with("plain", "untouched")
    documents = [("session:team:42", {**session_to_document(legacy), "message_count": 2}),
                 *((f"message:team:42:{m.message_id}", message_to_document(m))
                   for m in legacy.messages),
                 (session_key("plain"), {**session_to_document(plain), "message_count": 1}),
                 (message_key("plain", plain.messages[0].message_id),
                  message_to_document(plain.messages[0]))]
    await storage.store.put_many([(key, orjson.dumps(doc)) for key, doc in documents])
    with pytest.raises(StoreError, match="upgrade_key_layout"):
        await storage.load_session("team:42")
    with pytest.raises(StoreError, match="kvsessions upgrade"):
        await storage.append_message("team:42", ChatMessage.create("team:42", "user", "x"))
    assert (await upgrade_storage(storage.store))["keys_moved"] == 3  # kvsessions upgrade
    assert await upgrade_key_layout(storage.store) == 0  # nothing left to move
    loaded = await storage.load_session("team:42")
    assert loaded is not None and [m.content for m in loaded.messages] == ["hello", "again"]
    assert await stored_keys(storage, "session:team:") == []
    assert (await storage.load_session("plain")) is not None
    await assert_exact(storage, "team:42")


# ---------------------------------------------------------- item 2: delete racing appends

async def test_delete_racing_appends_leaves_nothing_behind(pair: Pair) -> None:
    first, second = pair
    for round_number in range(8):
        session = session_with(f"race-{round_number}", "first")
        await first.save_session(session)

        async def append(storage: SessionStorage, index: int, sid: str = session.session_id
                         ) -> None:
            with contextlib.suppress(SessionNotFoundError):
                await storage.append_message(sid, ChatMessage.create(sid, "user", str(index)))

        await asyncio.gather(*(append(pair[i % 2], i) for i in range(6)),
                             second.delete_session(session.session_id),
                             *(append(pair[i % 2], i) for i in range(6, 12)))
        await assert_gone(first, session.session_id)
        await assert_gone(second, session.session_id)


async def test_interrupted_delete_reads_as_absent_and_is_finished_by_deleting_again(
    pair: Pair,
) -> None:
    storage, _ = pair
    session = session_with("half-deleted", "a", "b")
    await storage.save_session(session)
    head = await storage.store.get(session_key("half-deleted"))
    assert head is not None
    marked = orjson.dumps({**orjson.loads(head), "status": "deleting"})
    assert await storage.store.compare_and_set(session_key("half-deleted"), head, marked)
    assert await storage.load_session("half-deleted") is None
    assert await storage.list_sessions() == []
    assert (await storage.statistics())["total_sessions"] == 0
    with pytest.raises(SessionNotFoundError):
        await storage.append_message("half-deleted",
                                     ChatMessage.create("half-deleted", "user", "late"))
    assert await storage.save_session(session) is False
    assert await storage.delete_session("half-deleted") is True
    await assert_gone(storage, "half-deleted")


# ------------------------------------------------- item 3: stale saves and shutdown revive nothing

async def test_stale_save_does_not_recreate_a_deleted_session(pair: Pair) -> None:
    first, second = pair
    loaded_copy = session_with("stale-loaded", "one")
    await first.save_session(loaded_copy)
    loaded = await first.load_session("stale-loaded")
    listed = (await first.list_sessions())[0]
    saved_copy = session_with("stale-saved", "two")
    await first.save_session(saved_copy)
    assert await second.delete_session("stale-loaded") is True
    assert await second.delete_session("stale-saved") is True
    assert loaded is not None
    loaded.add_message("user", "written after the delete")
    saved_copy.add_message("user", "written after the delete")
    listed.status = "archived"
    for stale in (loaded, saved_copy, listed):
        assert await first.save_session(stale) is False
    for session_id in ("stale-loaded", "stale-saved"):
        await assert_gone(first, session_id)
    # Deleted and created anew under the same id: another session, which a stale copy of
    # the first one must not write into either.
    await second.save_session(session_with("stale-loaded", "new life"))
    assert await first.save_session(loaded) is False
    again = await first.load_session("stale-loaded")
    assert again is not None and [m.content for m in again.messages] == ["new life"]


async def test_shutdown_writes_only_changed_sessions(pair: Pair) -> None:
    first, second = pair
    for session_id in ("kept", "deleted", "changed"):
        await first.save_session(session_with(session_id, "hello"))
    manager = SessionManager(first)
    for session_id in ("kept", "deleted", "changed"):
        assert await manager.get_session(session_id) is not None
    changed = await manager.get_session("changed")
    assert changed is not None
    changed.add_message("user", "unsaved until shutdown")
    assert await second.delete_session("deleted") is True
    before = await second.store.get(session_key("kept"))
    await manager.shutdown()
    await assert_gone(second, "deleted")
    assert await second.store.get(session_key("kept")) == before
    assert await assert_exact(second, "changed") == 2


async def test_archiving_a_session_deleted_elsewhere_reports_false(pair: Pair) -> None:
    first, second = pair
    await first.save_session(session_with("archived-late", "hello"))
    manager = SessionManager(first)
    assert await manager.get_session("archived-late") is not None
    await second.delete_session("archived-late")
    assert await manager.archive_session("archived-late") is False
    await assert_gone(second, "archived-late")


# ------------------------------------------------------------- item 4: exact message_count

async def test_concurrent_appends_count_exactly(pair: Pair, soak: int) -> None:
    """60 appends at once (issue 11 lost 42-100 of 200), each retried until its head change
    wins: the retries grow with the square of the appenders (``--soak`` multiplies them)."""
    first, second = pair
    await first.save_session(session_with("busy"))
    appends = 60 * soak

    async def append(storage: SessionStorage, index: int) -> None:
        await storage.append_message("busy", ChatMessage.create("busy", "user", str(index)))

    await asyncio.gather(*(append(pair[i % 2], i) for i in range(appends)))
    assert await assert_exact(second, "busy") == appends


async def test_saves_racing_appends_keep_every_count(pair: Pair) -> None:
    first, second = pair
    await first.save_session(session_with("mixed", "start"))
    copies = [await storage.load_session("mixed") for storage in pair]

    async def save_more(storage: SessionStorage, copy: ChatSession | None) -> None:
        assert copy is not None
        for step in range(5):
            copy.add_message("assistant", f"saved {step}")
            assert await storage.save_session(copy) is True

    async def append_more(storage: SessionStorage) -> None:
        for step in range(10):
            await storage.append_message("mixed", ChatMessage.create("mixed", "user", str(step)))

    await asyncio.gather(save_more(first, copies[0]), save_more(second, copies[1]),
                         append_more(first), append_more(second))
    assert await assert_exact(first, "mixed") == 1 + 5 + 5 + 10 + 10
    # Saving a copy again that has nothing new leaves the others' count alone.
    assert copies[0] is not None and await first.save_session(copies[0]) is True
    assert await assert_exact(second, "mixed") == 31


async def test_a_stale_copy_writes_only_what_it_changed(pair: Pair) -> None:
    first, second = pair
    await first.save_session(session_with("merge", "start"))
    stale, fresh = await first.load_session("merge"), await second.load_session("merge")
    assert stale is not None and fresh is not None
    fresh.status = "archived"
    fresh.metadata = {"owner": "b"}
    assert await second.save_session(fresh) is True
    stale.add_message("user", "late but kept")
    stale.model = "other-model"
    assert await first.save_session(stale) is True
    merged = await second.load_session("merge")
    assert merged is not None
    assert (merged.status, merged.metadata, merged.model) == ("archived", {"owner": "b"},
                                                             "other-model")
    assert merged.updated_at == stale.updated_at
    assert await assert_exact(second, "merge") == 2


async def test_a_retried_append_counts_once(pair: Pair) -> None:
    storage, _ = pair
    await storage.save_session(session_with("retry"))
    message = ChatMessage.create("retry", "user", "sent twice")
    await storage.append_message("retry", message)
    await storage.append_message("retry", message)
    assert await assert_exact(storage, "retry") == 1


# ----------------------------------------------------------- item 5: duplicate message ids

async def test_an_id_too_long_once_encoded_is_refused_before_anything_is_written(
    pair: Pair,
) -> None:
    storage, _ = pair
    session = session_with("short", "fine", "too long", message_ids=("m1", ":" * 200))
    with pytest.raises(InvalidKeyError, match="512"):
        await storage.save_session(session)
    assert await stored_keys(storage) == []


async def test_duplicate_message_ids_in_one_save_store_nothing(pair: Pair) -> None:
    storage, _ = pair
    session = session_with("twice", "one", "two", message_ids=("same", "same"))
    with pytest.raises(ValidationError, match="same"):
        await storage.save_session(session)
    assert await stored_keys(storage) == []
    fine = session_with("fine", "one")
    await storage.save_session(fine)
    fine.messages.append(fine.messages[0])  # the same message again
    fine.add_message("user", "new")
    with pytest.raises(ValidationError, match=fine.messages[0].message_id):
        await storage.save_session(fine)
    assert await assert_exact(storage, "fine") == 1
