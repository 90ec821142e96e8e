"""Issue 14, items 2 and 3, on every backend in tests/backends: head schema version 2 (owner,
revision; version 1 heads upcast on read), ``update_session`` (merge, conditional, index kept),
state documents of the three scopes, owner listing and paging through the index (reads
counted), the owner index built for a store of an earlier release, and two real processes
merging metadata and state into one session for ``STATE_SECONDS * --soak`` seconds with no
lost key and an exact ``message_count``."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import time
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

from kvsessions import RevisionConflictError, State, StateScope
from kvsessions.documents.codec import session_to_document
from kvsessions.documents.keys import (
    INDEX_STATE_KEY,
    message_key,
    session_key,
    session_state_key,
)
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import InvalidValueError, SessionNotFoundError, ValidationError
from kvsessions.kv.base import KVStore
from kvsessions.migration import upgrade_storage, verify_migration
from kvsessions.migration.copy import migrate_storage
from kvsessions.sessions.manager import SessionManager
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from tests.backends import store_of
from tests.test_listing import BASE, CountingStore, order

#: How long the two processes race, times ``--soak`` (``--soak 5``: the issue's 20 s).
STATE_SECONDS = 4.0


@pytest.fixture
async def counting(store_factory: StoreFactory) -> AsyncIterator[CountingStore]:
    async with store_of(store_factory, CountingStore) as store:
        yield store


@pytest.fixture
async def storage(counting: CountingStore) -> AsyncIterator[SessionStorage]:
    storage = SessionStorage(counting)
    await storage.initialize()
    yield storage


def v1_head(session: ChatSession) -> bytes:
    """``session``'s head as release 1 wrote it (schema version 1: no owner, no revision)."""
    document = orjson.loads(orjson.dumps(session_to_document(session)))
    for name in ("revision", "user_id", "app_name"):
        document.pop(name, None)
    document["v"] = 1
    return orjson.dumps(document)


# ------------------------------------------------------------------ schema version 2

async def test_every_head_write_adds_one_to_the_revision(storage: SessionStorage) -> None:
    session = ChatSession.create("m", user_id="u1", app_name="chat")
    assert session.revision == 0
    assert await storage.save_session(session) is True
    assert session.revision == 1
    stored = orjson.loads(await storage.store.get(session_key(session.session_id)) or b"")
    assert (stored["v"], stored["revision"], stored["user_id"], stored["app_name"]) == (
        2, 1, "u1", "chat")
    assert await storage.save_session(session) is True  # nothing changed: nothing written
    assert session.revision == 1
    await storage.append_message(session.session_id,
                                 ChatMessage.create(session.session_id, "user", "hi"))
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None and loaded.revision == 2 and loaded.user_id == "u1"
    updated = await storage.update_session(session.session_id, metadata={"k": 1})
    assert updated.revision == 3 and updated.message_count == 1 and updated.messages == []
    loaded.add_message("assistant", "hello")
    assert await storage.save_session(loaded) is True
    assert loaded.revision == 4
    again = await storage.load_session(session.session_id)
    assert again is not None and again.metadata == {"k": 1}  # the update is kept
    assert again.revision == 4 and again.message_count == 2


async def test_a_version_1_head_reads_as_revision_0_and_is_written_as_version_2(
    storage: SessionStorage, counting: CountingStore
) -> None:
    session = ChatSession.create("m", {"a": 1})
    message = ChatMessage.create(session.session_id, "user", "old")
    session.message_count = 1
    await storage.save_session(ChatSession.create("other"))  # the store is indexed now
    await counting.put(session_key(session.session_id), v1_head(session))
    await counting.put(message_key(session.session_id, message.message_id),
                       orjson.dumps(storage._message_document(session.session_id, message)))
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None
    assert (loaded.revision, loaded.user_id, loaded.app_name) == (0, None, None)
    assert [m.content for m in loaded.messages] == ["old"]
    with pytest.raises(RevisionConflictError):
        await storage.update_session(session.session_id, status="archived",
                                     expected_revision=1)
    updated = await storage.update_session(session.session_id, status="archived",
                                           expected_revision=0)
    assert updated.revision == 1 and updated.status == "archived"
    stored = orjson.loads(await counting.get(session_key(session.session_id)) or b"")
    assert stored["v"] == 2 and stored["revision"] == 1 and "user_id" not in stored
    assert [s.session_id for s in await storage.list_sessions("archived")] == [
        session.session_id]
    # a whole store of version 1 heads upgrades in place and still verifies against itself
    await counting.put(session_key(session.session_id), v1_head(session))
    report = await upgrade_storage(counting)
    assert report["documents_upgraded"] >= 1
    assert orjson.loads(await counting.get(session_key(session.session_id)) or b"")["v"] == 2


async def test_exports_and_migration_keep_version_2_heads_and_state(
    storage: SessionStorage, store_factory: StoreFactory
) -> None:
    manager = SessionManager(storage)
    session = await manager.create_session("m", user_id="u", app_name="a",
                                           metadata={"x": 1})
    session.add_message("user", "hi")
    await manager.auto_save(session)
    await storage.update_state(StateScope.session(session.session_id), {"step": 1})
    await storage.update_state(StateScope.user("a", "u"), {"theme": "dark"})
    exported = orjson.loads(await manager.export_session(session.session_id))
    assert exported["session_id"] == session.session_id
    destination = store_factory.new(store_factory.namespace + "_copy")
    try:
        result = await migrate_storage(storage.store, destination, validate=True)
        assert result["verified"] is True and result["invalid_documents"] == 0
        assert (await verify_migration(storage.store, destination))["ok"] is True
        copy = SessionStorage(destination)
        assert (await copy.get_state(StateScope.user("a", "u"))).value == {"theme": "dark"}
        assert [s.session_id for s in await copy.list_sessions(user_id="u")] == [
            session.session_id]
    finally:
        await destination.close()


# ------------------------------------------------------------------ update_session

async def test_update_session_merges_metadata_and_moves_index_entries(
    storage: SessionStorage, counting: CountingStore
) -> None:
    session = ChatSession.create("m", {"keep": 1, "drop": 2})
    await storage.save_session(session)
    before = session.updated_at
    counting.reset()
    updated = await storage.update_session(session.session_id, metadata={"drop": None,
                                                                         "new": [1]},
                                           status="archived", model="m2")
    assert not any(key.startswith("message:") for key in counting.read)  # head only
    assert updated.metadata == {"keep": 1, "new": [1]}
    assert (updated.status, updated.model) == ("archived", "m2")
    assert updated.updated_at > before
    assert await storage.list_sessions("active") == []
    assert [s.session_id for s in await storage.list_sessions("archived")] == [
        session.session_id]
    # a change that changes nothing writes nothing
    counting.reset()
    same = await storage.update_session(session.session_id, metadata={"keep": 1})
    assert same.revision == updated.revision and counting.calls <= 2
    # bad input: a clear error, nothing stored
    for bad in ({"status": "gone"}, {"metadata": {"x": float("nan")}},
                {"metadata": ["x"]}, {"model": 3}, {"expected_revision": -1}):
        with pytest.raises((ValidationError, InvalidValueError)):
            await storage.update_session(session.session_id, **bad)
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None and loaded.revision == updated.revision
    with pytest.raises(SessionNotFoundError):
        await storage.update_session("no-such-session", status="active")
    await storage.delete_session(session.session_id)
    with pytest.raises(SessionNotFoundError):
        await storage.update_session(session.session_id, status="active")


async def test_expected_revision_refuses_a_changed_head(storage: SessionStorage) -> None:
    session = ChatSession.create("m")
    with pytest.raises(RevisionConflictError):
        await storage.save_session(session, expected_revision=1)  # no head: revision 0
    assert await storage.load_session(session.session_id) is None
    assert await storage.save_session(session, expected_revision=0) is True
    other = await storage.load_session(session.session_id)
    assert other is not None
    await storage.update_session(session.session_id, metadata={"by": "other"})
    session.add_message("user", "stale")
    with pytest.raises(RevisionConflictError) as caught:
        await storage.save_session(session, expected_revision=session.revision)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None and loaded.messages == [] and loaded.message_count == 0
    assert await storage.save_session(session, expected_revision=2) is True
    assert session.revision == 3
    with pytest.raises(RevisionConflictError):
        await storage.update_session(session.session_id, metadata={"x": 1},
                                     expected_revision=2)


# ------------------------------------------------------------------ state documents

async def test_state_of_each_scope_merges_replaces_and_compares(
    storage: SessionStorage
) -> None:
    session = ChatSession.create("m")
    await storage.save_session(session)
    scopes = [StateScope.session(session.session_id), StateScope.user("app", "u:1"),
              StateScope.user("app", "u"), StateScope.app("app"), StateScope.app("app:u")]
    for scope in scopes:
        assert await storage.get_state(scope) == State()
    for number, scope in enumerate(scopes):
        state = await storage.update_state(scope, {"n": number, "gone": True})
        assert state.value == {"n": number, "gone": True} and state.revision == 1
        state = await storage.update_state(scope, {"gone": None, "more": {"a": [1]}},
                                           expected_revision=1)
        assert state.value == {"n": number, "more": {"a": [1]}} and state.revision == 2
    for number, scope in enumerate(scopes):  # no scope wrote over another
        state = await storage.get_state(scope)
        assert state.value == {"n": number, "more": {"a": [1]}} and state.revision == 2
    scope = scopes[1]
    with pytest.raises(RevisionConflictError):
        await storage.update_state(scope, {"x": 1}, expected_revision=1)
    with pytest.raises(RevisionConflictError):
        await storage.set_state(scope, {}, expected_revision=0)
    assert (await storage.set_state(scope, {"only": 1}, expected_revision=2)).revision == 3
    assert (await storage.get_state(scope)).value == {"only": 1}
    unchanged = await storage.update_state(scope, {"only": 1})
    assert unchanged.revision == 3  # nothing changed: nothing written
    bad_calls: list[Callable[[], Any]] = [
        lambda: storage.update_state(scope, {"x": float("inf")}),
        lambda: storage.update_state(scope, ["x"]),  # type: ignore[arg-type]
        lambda: storage.set_state("app", {}),  # type: ignore[arg-type]
        lambda: storage.update_state(scope, {}, expected_revision=True),
    ]
    for bad_call in bad_calls:
        with pytest.raises((ValidationError, InvalidValueError)):
            await bad_call()
    assert (await storage.get_state(scope)).value == {"only": 1}
    builds: list[Callable[[], Any]] = [
        lambda: StateScope.app(""),
        lambda: StateScope.user("a", None),  # type: ignore[arg-type]
        lambda: StateScope.session("x" * 201),
    ]
    for build in builds:
        with pytest.raises(InvalidValueError):
            build()


async def test_delete_state_removes_one_scope_and_compares(storage: SessionStorage) -> None:
    session = ChatSession.create("m")
    await storage.save_session(session)
    scopes = [StateScope.session(session.session_id), StateScope.user("app", "u"),
              StateScope.app("app")]
    for scope in scopes:
        await storage.update_state(scope, {"a": 1})
    user = scopes[1]
    assert await storage.delete_state(user) is True
    assert await storage.get_state(user) == State()
    assert await storage.store.get(user.key) is None
    assert await storage.delete_state(user) is False  # nothing left to remove
    for scope in (scopes[0], scopes[2]):  # the other scopes keep theirs
        assert (await storage.get_state(scope)).value == {"a": 1}
    app = scopes[2]
    await storage.update_state(app, {"b": 2})  # revision 2
    with pytest.raises(RevisionConflictError):
        await storage.delete_state(app, expected_revision=1)
    assert (await storage.get_state(app)).revision == 2
    assert await storage.delete_state(app, expected_revision=2) is True
    with pytest.raises(RevisionConflictError):
        await storage.delete_state(app, expected_revision=2)
    assert await storage.delete_state(app, expected_revision=0) is False
    with pytest.raises(InvalidValueError):
        await storage.delete_state(app, expected_revision=-1)
    with pytest.raises(InvalidValueError):
        await storage.delete_state("app")  # type: ignore[arg-type]
    assert await storage.delete_state(scopes[0]) is True  # the session stays
    assert await storage.load_session(session.session_id) is not None
    await storage.update_state(user, {"again": True})  # written anew from revision 1
    assert (await storage.get_state(user)).revision == 1


async def test_concurrent_deletes_of_one_state_remove_it_once(storage: SessionStorage) -> None:
    scope = StateScope.app("race")
    await storage.update_state(scope, {"a": 1})
    results = await asyncio.gather(*(storage.delete_state(scope) for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]


async def test_session_state_needs_its_session_and_goes_with_it(
    storage: SessionStorage
) -> None:
    with pytest.raises(SessionNotFoundError):
        await storage.update_state(StateScope.session("missing"), {"a": 1})
    assert await storage.store.get(session_state_key("missing")) is None
    session = ChatSession.create("m")
    session.add_message("user", "hi")
    await storage.save_session(session)
    scope = StateScope.session(session.session_id)
    await storage.update_state(scope, {"a": 1})
    await storage.update_state(StateScope.app("kept"), {"a": 1})
    assert await storage.delete_session(session.session_id) is True
    assert await storage.get_state(scope) == State()
    assert await storage.store.get(session_state_key(session.session_id)) is None
    assert (await storage.get_state(StateScope.app("kept"))).value == {"a": 1}


# ------------------------------------------------------------------ owners

def owned(session_id: str, minutes: float, user: str | None, app: str | None,
          status: str = "active") -> ChatSession:
    session = ChatSession.create("m", user_id=user, app_name=app)
    session.session_id = session_id
    session.created_at = BASE
    session.updated_at = BASE + timedelta(minutes=minutes)
    session.status = status
    return session


async def test_owner_listing_and_paging_read_only_the_owners_sessions(
    storage: SessionStorage, counting: CountingStore
) -> None:
    owners = [("u1", "a1"), ("u2", "a1"), ("u1", "a2"), ("u1", None), (None, "a1"),
              (None, None), ("u:1", "a:1")]
    sessions = [owned(f"s{i}", minutes=i % 17, user=owners[i % len(owners)][0],
                      app=owners[i % len(owners)][1],
                      status="archived" if i % 5 == 0 else "active") for i in range(70)]
    for session in sessions:
        await storage.save_session(session)

    def expected(user: str | None, app: str | None, status: str | None = None) -> list[str]:
        return order(s for s in sessions
                     if (user is None or s.user_id == user) and (app is None
                                                                 or s.app_name == app)
                     and (status is None or s.status == status))

    for user, app in [("u1", "a1"), ("u1", None), (None, "a1"), ("u:1", "a:1"),
                      ("u:1", None), (None, "a2"), ("nobody", None)]:
        counting.reset()
        listed = await storage.list_sessions(user_id=user, app_name=app, limit=100)
        assert [s.session_id for s in listed] == expected(user, app)
        heads_read = {key for key in counting.read if key.startswith("session:")}
        assert heads_read <= {session_key(i) for i in expected(user, app)}
        found: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = await storage.page_sessions(limit=3, before=cursor, user_id=user,
                                                       app_name=app)
            found += [s.session_id for s in page]
            if cursor is None:
                break
        assert found == expected(user, app)
        assert [s.session_id for s in await storage.list_sessions(
            "archived", user_id=user, app_name=app)] == expected(user, app, "archived")
    # a page of 2 of one user's sessions reads about 2 heads, not the store
    counting.reset()
    page, _ = await storage.page_sessions(limit=2, user_id="u1", app_name="a1")
    assert len(page) == 2
    assert len({k for k in counting.read if k.startswith("session:")}) <= 2 + 16
    # the owner stays as created: a save of a copy with another owner keeps the stored one
    copy = await storage.load_session("s0")
    assert copy is not None and copy.user_id == "u1"
    copy.user_id = "intruder"
    copy.metadata["x"] = 1
    assert await storage.save_session(copy) is True and copy.user_id == "u1"
    assert await storage.list_sessions(user_id="intruder") == []
    # moves and deletes keep the owner index right
    await storage.update_session("s0", status="active", metadata={"y": 2})
    assert (await storage.list_sessions(user_id="u1", app_name="a1", limit=1))[0].session_id \
        == "s0"
    await storage.delete_session("s0")
    assert "s0" not in [s.session_id for s in await storage.list_sessions(user_id="u1")]
    leftovers = [key for key in await counting.keys("index:") if key.endswith(":s0")]
    assert leftovers == []
    for bad in ({"user_id": ""}, {"app_name": 7}):
        with pytest.raises(InvalidValueError):
            await storage.list_sessions(**bad)  # type: ignore[arg-type]


async def test_an_owner_adds_no_store_call_to_an_append(
    storage: SessionStorage, counting: CountingStore
) -> None:
    calls = []
    for owner in ({}, {"user_id": "u", "app_name": "a"}):
        session = ChatSession.create("m", **owner)
        await storage.save_session(session)
        counting.reset()
        await storage.append_message(session.session_id,
                                     ChatMessage.create(session.session_id, "user", "hi"))
        calls.append(counting.calls)
    assert calls[0] == calls[1]


async def test_owner_entries_are_built_for_a_store_without_an_index(
    storage: SessionStorage, counting: CountingStore
) -> None:
    sessions = [owned(f"s{i}", minutes=i, user=f"u{i % 3}", app="app") for i in range(12)]
    items = [(session_key(s.session_id), orjson.dumps(session_to_document(s)))
             for s in sessions]
    items += [(session_key("old"), v1_head(owned("old", 1, None, None)))]
    await counting.delete(INDEX_STATE_KEY)
    await counting.put_many(items)  # heads as a writer without the index left them
    fresh = SessionStorage(counting)
    with pytest.warns(UserWarning, match="kvsessions upgrade"):
        listed = await fresh.list_sessions(user_id="u1", app_name="app")
    assert [s.session_id for s in listed] == order(s for s in sessions if s.user_id == "u1")
    result = await upgrade_storage(counting)
    assert result["documents_indexed"] == 13
    indexed = SessionStorage(counting)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counting.reset()
        listed = await indexed.list_sessions(user_id="u2")
        assert [s.session_id for s in listed] == order(
            s for s in sessions if s.user_id == "u2")
        assert {k for k in counting.read if k.startswith("session:")} == {
            session_key(s.session_id) for s in sessions if s.user_id == "u2"}
        assert len(await indexed.list_sessions(app_name="app")) == 12


# ------------------------------------------------------------------ two processes

async def _merge_for(storage: SessionStorage, session_id: str, writer: str,
                     until: float) -> dict[str, int]:
    """Set metadata and state keys of ``writer`` and append messages until ``until``; what
    was stored (the calls returned)."""
    done = {"metadata": 0, "state": 0, "messages": 0}
    scope = StateScope.session(session_id)
    user_scope = StateScope.user("app", "shared")
    while time.monotonic() < until or done["metadata"] == 0:
        n = done["metadata"]
        await storage.update_session(session_id, metadata={f"{writer}:{n}": n,
                                                           f"{writer}:last": n})
        done["metadata"] += 1
        await storage.update_state(scope if n % 2 else user_scope, {f"{writer}:{n}": n})
        done["state"] += 1
        if n % 3 == 0:
            await storage.append_message(
                session_id, ChatMessage.create(session_id, "user", f"{writer}:{n}"))
            done["messages"] += 1
        if n % 7 == 0:  # a stale full save from a loaded copy must not undo the others
            copy = await storage.load_session(session_id)
            assert copy is not None
            copy.metadata[f"{writer}:saved:{n}"] = n
            await storage.save_session(copy)
    return done


def _merge_process(make: Callable[[str], KVStore], namespace: str, session_id: str,
                   writer: str, seconds: float, barrier: Any, results: Any) -> None:
    async def run() -> None:
        async with SessionStorage(make(namespace)) as storage:
            barrier.wait(timeout=60)
            results[writer] = await _merge_for(storage, session_id, writer,
                                               time.monotonic() + seconds)

    asyncio.run(run())


def test_two_processes_merging_one_session_lose_no_key(store_factory: StoreFactory,
                                                        soak: int) -> None:
    """Two real processes (two tasks on in-process stores) update metadata and state of one
    session, append to it and save loaded copies of it for ``STATE_SECONDS * soak`` s: every
    key either wrote is there, and the head counts exactly the messages stored."""
    seconds = STATE_SECONDS * soak
    session = ChatSession.create("m", user_id="shared", app_name="app")

    async def prepare() -> None:
        async with SessionStorage(store_factory.new()) as storage:
            await storage.save_session(session)

    async def check(results: dict[str, dict[str, int]],
                    storage: SessionStorage | None = None) -> None:
        if storage is None:
            async with SessionStorage(store_factory.new()) as fresh:
                await check(results, fresh)
            return
        if True:
            loaded = await storage.load_session(session.session_id)
            assert loaded is not None
            head = (await storage.list_sessions(user_id="shared"))[0]
            session_state = (await storage.get_state(
                StateScope.session(session.session_id))).value
            user_state = (await storage.get_state(StateScope.user("app", "shared"))).value
            for writer, done in results.items():
                assert done["metadata"] > 0
                for n in range(done["metadata"]):
                    assert loaded.metadata[f"{writer}:{n}"] == n
                    assert (session_state if n % 2 else user_state)[f"{writer}:{n}"] == n
                assert loaded.metadata[f"{writer}:last"] == done["metadata"] - 1
                for n in range(0, done["metadata"], 7):
                    assert loaded.metadata[f"{writer}:saved:{n}"] == n
            messages = sum(done["messages"] for done in results.values())
            assert len(loaded.messages) == loaded.message_count == head.message_count \
                == messages

    async def in_one_process() -> dict[str, dict[str, int]]:
        async with SessionStorage(store_factory.new()) as storage:
            await storage.save_session(session)
            until = time.monotonic() + seconds
            found = await asyncio.gather(*(_merge_for(storage, session.session_id, w, until)
                                           for w in ("a", "b")))
            await check(dict(zip(("a", "b"), found, strict=True)), storage)
            return {}

    try:
        if not store_factory.persistent:
            asyncio.run(in_one_process())
            return
        asyncio.run(prepare())
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(2)
        with context.Manager() as manager:
            results = manager.dict()
            processes = [context.Process(target=_merge_process, args=(
                store_factory.make, store_factory.namespace, session.session_id, writer,
                seconds, barrier, results)) for writer in ("a", "b")]
            for process in processes:
                process.start()
            for process in processes:
                process.join(timeout=seconds + 120)
                assert process.exitcode == 0, f"writer process failed ({process.exitcode})"
            final = dict(results)
        asyncio.run(check(final))
    finally:
        if store_factory.cleanup is not None:
            asyncio.run(store_factory.cleanup())
