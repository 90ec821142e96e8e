"""Google ADK's session service on kvsessions (``kvsessions.integrations.adk``), on SQLite,
PostgreSQL, Redis and MongoDB: the service contract as ADK's own tests state it (create, get
with ``num_recent_events`` and ``after_timestamp``, list, delete, state by scope, temp state
dropped, stale writers refused), events that round-trip exactly, the documents kvsessions keeps
of them, and two processes appending events with ``user:`` state deltas at once."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from kvsessions.documents.models import ChatMessage
from kvsessions.integrations.adk import EVENT_KEY, KVSessionService, adk_ids, stored_id
from kvsessions.kv.base import KVStore
from kvsessions.sessions.state import StateScope
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from tests.integrations.store_params import integration_stores, pytest_generate_tests, store_url

__all__ = ["integration_stores", "pytest_generate_tests"]

APP, USER = "weather_app", "user:1"  # a ':' in an id, to exercise the id encoding


def service(stores: StoreFactory) -> KVSessionService:
    return KVSessionService(SessionStorage(stores.new()))


def event(text: str = "", *, author: str = "user", delta: dict[str, Any] | None = None,
          timestamp: float | None = None) -> Event:
    extra: dict[str, Any] = {} if timestamp is None else {"timestamp": timestamp}
    content = types.Content(role="user" if author == "user" else "model",
                            parts=[types.Part(text=text)]) if text else None
    return Event(invocation_id="inv", author=author, content=content,
                 actions=EventActions(state_delta=delta or {}), **extra)


async def test_create_get_list_delete(integration_stores: StoreFactory) -> None:
    adk = service(integration_stores)
    assert await adk.get_session(app_name=APP, user_id=USER, session_id="nope") is None
    created = await adk.create_session(app_name=APP, user_id=USER, session_id="s1",
                                       state={"k": "v", "app:a": 1, "user:u": 2, "temp:t": 3})
    assert created.state == {"k": "v", "app:a": 1, "user:u": 2}
    assert await adk.get_session(app_name=APP, user_id=USER, session_id="s1") == created
    assert await adk.get_session(app_name=APP, user_id="other", session_id="s1") is None
    assert await adk.get_session(app_name="other", user_id=USER, session_id="s1") is None
    with pytest.raises(AlreadyExistsError):
        await adk.create_session(app_name=APP, user_id=USER, session_id="s1")
    other = await adk.create_session(app_name=APP, user_id="other", session_id="s1")
    generated = await adk.create_session(app_name=APP, user_id=USER)
    listed = (await adk.list_sessions(app_name=APP, user_id=USER)).sessions
    assert [s.id for s in listed] == ["s1", generated.id]  # least recently updated first
    assert {s.id for s in (await adk.list_sessions(app_name=APP)).sessions} == {
        "s1", generated.id}  # s1 of two users
    assert len((await adk.list_sessions(app_name=APP)).sessions) == 3
    assert listed[0].state == created.state and listed[0].events == []
    await adk.delete_session(app_name=APP, user_id=USER, session_id="s1")
    assert await adk.get_session(app_name=APP, user_id=USER, session_id="s1") is None
    assert await adk.get_session(app_name=APP, user_id="other", session_id="s1") == other
    assert await adk.get_user_state(app_name=APP, user_id=USER) == {"u": 2}  # user state stays
    await adk.storage.close()


async def test_events_round_trip_and_state_by_scope(integration_stores: StoreFactory) -> None:
    adk = service(integration_stores)
    session = await adk.create_session(app_name=APP, user_id=USER, session_id="s1")
    blob = types.Content(role="user", parts=[types.Part.from_bytes(data=b"\x00\xff png",
                                                                   mime_type="image/png")])
    first = Event(invocation_id="inv", author="user", content=blob,
                  actions=EventActions(state_delta={"k": 1, "app:a": "x", "temp:t": 9}))
    second = event("It is 18 °C in Zürich", author="weather_agent",
                   delta={"user:city": "Zürich", "k": None})
    await adk.append_event(session, first)
    await adk.append_event(session, second)
    assert session.state["temp:t"] == 9  # the running invocation still sees it
    assert "temp:t" not in first.actions.state_delta
    got = await adk.get_session(app_name=APP, user_id=USER, session_id="s1")
    assert got is not None
    assert got.events == [first, second]
    assert got.state == {"k": None, "app:a": "x", "user:city": "Zürich"}
    assert await adk.get_user_state(app_name=APP, user_id=USER) == {"city": "Zürich"}
    other_user = await adk.create_session(app_name=APP, user_id="u2", session_id="s2")
    assert other_user.state == {"app:a": "x"}
    stored = await adk.storage.load_session(stored_id(APP, USER, "s1"))
    assert stored is not None and stored.message_count == 2
    assert (stored.user_id, stored.app_name) == (USER, APP)
    assert [(m.role, m.content) for m in stored.messages] == [
        ("user", ""), ("assistant", "It is 18 °C in Zürich")]
    assert stored.messages[1].metadata[EVENT_KEY]["author"] == "weather_agent"
    state = await adk.storage.get_state(StateScope.session(stored.session_id))
    assert state.value == {"k": None}
    await adk.storage.close()


async def test_get_session_config(integration_stores: StoreFactory) -> None:
    adk = service(integration_stores)
    session = await adk.create_session(app_name=APP, user_id=USER)
    for second in range(1, 6):
        await adk.append_event(session, event(f"e{second}", timestamp=float(second)))

    async def timestamps(**config: Any) -> list[float]:
        got = await adk.get_session(app_name=APP, user_id=USER, session_id=session.id,
                                    config=GetSessionConfig(**config))
        assert got is not None
        return [e.timestamp for e in got.events]

    assert await timestamps() == [1, 2, 3, 4, 5]
    assert await timestamps(num_recent_events=0) == []
    assert await timestamps(num_recent_events=2) == [4, 5]
    assert await timestamps(num_recent_events=9) == [1, 2, 3, 4, 5]
    assert await timestamps(after_timestamp=4.0) == [4, 5]
    assert await timestamps(after_timestamp=50.0) == []
    assert await timestamps(after_timestamp=2.0, num_recent_events=2) == [4, 5]
    await adk.storage.close()


async def test_a_stale_writer_is_refused(integration_stores: StoreFactory) -> None:
    adk = service(integration_stores)
    mine = await adk.create_session(app_name=APP, user_id=USER, session_id="s1")
    await adk.append_event(mine, event("one", delta={"k": 1}))
    copy = await adk.get_session(app_name=APP, user_id=USER, session_id="s1")
    assert copy is not None
    await adk.append_event(copy, event("two", delta={"k": 2, "user:u": 2}))
    with pytest.raises(StaleSessionError, match="modified in storage"):
        await adk.append_event(mine, event("three", delta={"k": 3, "user:u": 3}))
    got = await adk.get_session(app_name=APP, user_id=USER, session_id="s1")
    assert got is not None
    assert [e.content.parts[0].text for e in got.events if e.content and e.content.parts] == [
        "one", "two"]
    assert got.state == {"k": 2, "user:u": 2}
    # A session object built by hand (no revision marker) is checked as ADK checks one.
    by_hand = got.model_copy(deep=True)
    by_hand._storage_update_marker = None
    await adk.append_event(by_hand, event("four"))
    stale_by_hand = got.model_copy(deep=True)
    stale_by_hand._storage_update_marker = None
    stale_by_hand.last_update_time -= 60
    with pytest.raises(StaleSessionError):
        await adk.append_event(stale_by_hand, event("five"))
    # Two copies of one revision at once: exactly one appends.
    latest = await adk.get_session(app_name=APP, user_id=USER, session_id="s1")
    assert latest is not None
    results = await asyncio.gather(
        *(adk.append_event(latest.model_copy(deep=True), event(f"race {i}", delta={"r": i}))
          for i in range(2)), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Event", "StaleSessionError"]
    await adk.delete_session(app_name=APP, user_id=USER, session_id="s1")
    with pytest.raises(SessionNotFoundError):
        await adk.append_event(latest, event("gone"))
    await adk.storage.close()


async def test_partial_events_are_not_stored(integration_stores: StoreFactory) -> None:
    adk = service(integration_stores)
    session = await adk.create_session(app_name=APP, user_id=USER)
    partial = Event(invocation_id="inv", author="user", partial=True)
    assert await adk.append_event(session, partial) is partial
    got = await adk.get_session(app_name=APP, user_id=USER, session_id=session.id)
    assert got is not None and got.events == [] and session.events == []
    await adk.storage.close()


async def test_messages_written_by_kvsessions_read_as_events(
        integration_stores: StoreFactory) -> None:
    adk = service(integration_stores)
    session = await adk.create_session(app_name=APP, user_id=USER, session_id="s1")
    key = stored_id(APP, USER, "s1")
    await adk.storage.append_message(key, ChatMessage.create(key, "assistant", "hello"))
    got = await adk.get_session(app_name=APP, user_id=USER, session_id=session.id)
    assert got is not None and len(got.events) == 1
    assert got.events[0].author == "assistant"
    assert got.events[0].content is not None and got.events[0].content.parts is not None
    assert got.events[0].content.parts[0].text == "hello"
    await adk.storage.close()


def test_ids_are_encoded_one_to_one() -> None:
    parts = [("a", "b", "c"), ("a:b", "c", "d"), ("a", "b:c", "d"), ("a%3Ab", "c", "d"),
             ("%", ":", "%25:")]
    encoded = [stored_id(*p) for p in parts]
    assert len(set(encoded)) == len(parts)
    assert [adk_ids(e) for e in encoded] == parts


async def test_storage_from_a_url_or_a_store(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/adk.db"
    async with KVSessionService(url) as adk:
        await adk.create_session(app_name=APP, user_id=USER, session_id="s1")
    store = SessionStorage.from_url(url).store
    assert isinstance(store, KVStore)
    by_store = KVSessionService(store)
    assert await by_store.get_session(app_name=APP, user_id=USER, session_id="s1") is not None
    await by_store.close()  # the caller's store stays open
    assert await KVSessionService(store).get_session(
        app_name=APP, user_id=USER, session_id="s1") is not None
    await store.close()


def test_a_service_from_a_url_serves_every_event_loop(integration_stores: StoreFactory,
                                                      tmp_path: Any) -> None:
    """``asyncio.run`` per call, and a thread's loop while another runs: one storage serves
    them all (its store keeps the driver's connections per loop)."""
    adk = KVSessionService(store_url(integration_stores, tmp_path))
    seen: list[SessionStorage] = []

    async def append(text: str) -> None:
        session = await adk.get_session(app_name=APP, user_id=USER, session_id="loops")
        assert session is not None
        await adk.append_event(session, event(text))
        seen.append(adk.storage)

    async def first() -> None:
        await adk.create_session(app_name=APP, user_id=USER, session_id="loops")
        await append("first")
        await asyncio.to_thread(asyncio.run, append("from a thread"))

    async def last() -> list[str]:
        await append("again")
        session = await adk.get_session(app_name=APP, user_id=USER, session_id="loops")
        await adk.close()
        assert session is not None
        return [str(e.content.parts[0].text) for e in session.events
                if e.content and e.content.parts]

    asyncio.run(first())
    assert asyncio.run(last()) == ["first", "from a thread", "again"]
    assert len(seen) == 3 and all(storage is seen[0] for storage in seen)


# ---------------------------------------------------------------------- two processes

ROUNDS = 25


def _worker(make: Callable[[str], KVStore], namespace: str, name: str, barrier: Any,
            results: Any) -> None:
    """Append ``ROUNDS`` events with ``user:`` deltas, re-reading the session whenever the
    other process got in first (as an ADK runner would); report the events it stored."""
    async def run() -> tuple[list[str], int]:
        adk = KVSessionService(SessionStorage(make(namespace)))
        stored: list[str] = []
        refused = 0
        barrier.wait(timeout=60)
        session = await adk.get_session(app_name=APP, user_id=USER, session_id="shared")
        for i in range(ROUNDS):
            while True:
                assert session is not None
                try:
                    await adk.append_event(session, event(
                        f"{name}:{i}", delta={f"user:{name}": i, "user:last": f"{name}:{i}",
                                              f"{name}:count": i + 1}))
                    break
                except StaleSessionError:
                    refused += 1
                    session = await adk.get_session(app_name=APP, user_id=USER,
                                                    session_id="shared")
            stored.append(f"{name}:{i}")
        await adk.storage.close()
        return stored, refused

    results.put((name, asyncio.run(run())))


def test_two_processes_append_events_with_user_state(integration_stores: StoreFactory) -> None:
    """Every acknowledged event is stored once, in each writer's order; the count is exact;
    each writer's user-state key ends at its last value, and no refused event left a trace."""
    async def prepare() -> None:
        adk = service(integration_stores)
        await adk.create_session(app_name=APP, user_id=USER, session_id="shared")
        await adk.storage.close()

    asyncio.run(prepare())
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_worker, args=(
        integration_stores.make, integration_stores.namespace, name, barrier, results))
        for name in ("a", "b")]
    for process in processes:
        process.start()
    reports = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    async def check() -> None:
        adk = service(integration_stores)
        got = await adk.get_session(app_name=APP, user_id=USER, session_id="shared")
        head = await adk.storage.load_session(stored_id(APP, USER, "shared"), last_messages=1)
        await adk.storage.close()
        assert got is not None and head is not None
        texts = [e.content.parts[0].text for e in got.events
                 if e.content is not None and e.content.parts]
        assert len(texts) == len(set(texts)) == head.message_count == 2 * ROUNDS
        for name in "ab":
            assert [t for t in texts if t.startswith(name + ":")] == reports[name][0]
            assert got.state[f"user:{name}"] == ROUNDS - 1
            assert got.state[f"{name}:count"] == ROUNDS
        assert got.state["user:last"] in {f"a:{ROUNDS - 1}", f"b:{ROUNDS - 1}"}

    asyncio.run(check())
