"""The OpenAI Agents SDK session on kvsessions (``kvsessions.integrations.openai_agents``), on
SQLite, PostgreSQL, Redis and MongoDB: the SDK's session protocol as its own tests exercise it
(add, get with a limit and with ``session_settings``, pop, clear, separate sessions, an agent
run that reads its history), items that round-trip exactly, the messages kvsessions keeps of
them, and two processes adding and popping on one session at once."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest
from agents import Agent, Runner
from agents.memory import SessionABC, SessionSettings
from agents.testing import ScriptedModel, assistant_message

from kvsessions.documents.models import ChatMessage
from kvsessions.integrations.openai_agents import ITEM_KEY, OpenAIAgentsSession
from kvsessions.kv.base import KVStore
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from tests.integrations.store_params import (
    integration_stores,
    pytest_generate_tests,
    store_url,
)

__all__ = ["integration_stores", "pytest_generate_tests"]

#: Items of every shape a run stores: messages (text and parts), a tool call and its output,
#: reasoning; non-ASCII text, quotes, nested values, big integers and floats.
ITEMS: list[Any] = [
    {"role": "user", "content": "What is the weather in Zürich? 😀 'quoted' \"double\""},
    {"role": "developer", "content": "Be brief."},
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "look"}]},
    {"type": "function_call", "call_id": "call_1", "name": "weather",
     "arguments": "{\"city\": \"Zürich\"}", "id": "fc_1", "status": "completed"},
    {"type": "function_call_output", "call_id": "call_1",
     "output": "{\"celsius\": -3.5, \"big\": 9007199254740993}"},
    {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
     "content": [{"type": "output_text", "text": "Cold: ", "annotations": []},
                 {"type": "output_text", "text": "-3.5 °C", "annotations": []}]},
    {"role": "system", "content": [{"type": "input_text", "text": "part one"}],
     "extra": {"n": 2**62, "f": 0.1, "none": None, "list": [1, [2, [3]]]}},
]


def adapter(stores: StoreFactory, session_id: str = "conversation-1",
            **options: Any) -> OpenAIAgentsSession:
    return OpenAIAgentsSession(session_id, SessionStorage(stores.new()), **options)


def texts(items: list[Any]) -> list[Any]:
    return [item.get("content") for item in items]


async def test_it_is_an_sdk_session(integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores)
    assert isinstance(session, SessionABC)
    assert isinstance(session.session_settings, SessionSettings)
    assert session.session_settings.limit is None
    await session.storage.close()


async def test_items_round_trip_exactly_in_order(integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores)
    await session.add_items(ITEMS[:3])
    await session.add_items([])
    await session.add_items(ITEMS[3:])
    assert await session.get_items() == ITEMS
    other = adapter(integration_stores)  # another handle on the same store reads the same
    assert await other.get_items() == ITEMS
    await session.storage.close()
    await other.storage.close()


async def test_items_are_messages_kvsessions_can_show(integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores)
    await session.add_items(ITEMS)
    stored = await session.storage.load_session("conversation-1")
    assert stored is not None and stored.model == "openai-agents"
    assert stored.message_count == len(ITEMS)
    assert [(m.role, m.content) for m in stored.messages] == [
        ("user", ITEMS[0]["content"]), ("system", "Be brief."), ("assistant", ""),
        ("assistant", "weather({\"city\": \"Zürich\"})"),
        ("tool", ITEMS[4]["output"]), ("assistant", "Cold: -3.5 °C"), ("system", "part one")]
    # a plain text item is its message's role and content; every other is kept whole
    assert [m.metadata.get(ITEM_KEY) for m in stored.messages] == [None, *ITEMS[1:]]
    await session.storage.close()


async def test_plain_text_items_are_stored_once(integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores)
    plain = [{"content": "hi", "role": "user"}, {"role": "assistant", "content": ""},
             {"role": "system", "content": "Be brief."}]
    whole = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": ["x"]},
             {"role": "user", "content": "hi", "type": "message"}]
    await session.add_items(plain + whole)
    stored = await session.storage.load_session("conversation-1")
    assert stored is not None
    assert [m.metadata for m in stored.messages] == [{}] * 3 + [{ITEM_KEY: i} for i in whole]
    assert await session.get_items() == plain + whole
    assert await session.pop_item() == whole[-1]
    await session.storage.close()


async def test_get_items_latest_limit(integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores, session_settings=SessionSettings(limit=3))
    items = [{"role": "user", "content": f"m{i}"} for i in range(6)]
    await session.add_items(items)
    assert await session.get_items() == items[-3:]  # the settings' limit
    assert await session.get_items(limit=2) == items[-2:]  # an explicit one wins
    assert await session.get_items(limit=10) == items
    assert await session.get_items(limit=0) == []
    unlimited = adapter(integration_stores, session_settings={"limit": None})
    assert await unlimited.get_items() == items
    await session.storage.close()
    await unlimited.storage.close()


async def test_pop_item_latest_first_then_none(integration_stores: StoreFactory) -> None:
    session, other = adapter(integration_stores), adapter(integration_stores, "conversation-2")
    assert await session.pop_item() is None  # no session yet
    await session.add_items(ITEMS[:3])
    await other.add_items([{"role": "user", "content": "other"}])
    assert [await session.pop_item() for _ in range(4)] == [*reversed(ITEMS[:3]), None]
    assert await session.get_items() == []
    assert texts(await other.get_items()) == ["other"]
    stored = await session.storage.load_session("conversation-1")
    assert stored is not None and stored.message_count == 0
    await session.storage.close()
    await other.storage.close()


async def test_clear_session_keeps_the_session(integration_stores: StoreFactory) -> None:
    session, other = adapter(integration_stores), adapter(integration_stores, "conversation-2")
    await session.add_items(ITEMS)
    await other.add_items(ITEMS[:1])
    await session.clear_session()
    assert await session.get_items() == []
    assert await other.get_items() == ITEMS[:1]
    stored = await session.storage.load_session("conversation-1")
    assert stored is not None and stored.message_count == 0
    await session.add_items(ITEMS[:2])
    assert await session.get_items() == ITEMS[:2]
    await session.clear_session()
    await session.clear_session()  # nothing left: still fine
    await session.storage.close()
    await other.storage.close()


async def test_messages_written_by_kvsessions_read_as_items(
        integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores)
    await session.add_items(ITEMS[:1])
    for role in ("assistant", "tool"):
        await session.storage.append_message(
            "conversation-1", ChatMessage.create("conversation-1", role, f"from {role}"))
    assert (await session.get_items())[1:] == [
        {"role": "assistant", "content": "from assistant"},
        {"role": "assistant", "content": "from tool"}]
    await session.storage.close()


async def test_a_bad_item_stores_nothing(integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores)
    await session.add_items(ITEMS[:1])
    with pytest.raises(TypeError):
        await session.add_items([ITEMS[1], "not an item"])  # type: ignore[list-item]
    with pytest.raises((TypeError, ValueError)):
        await session.add_items([ITEMS[1], {"role": "user", "content": object()}])
    assert await session.get_items() == ITEMS[:1]
    await session.storage.close()


async def test_an_agent_run_keeps_its_history(integration_stores: StoreFactory) -> None:
    session = adapter(integration_stores)
    model = ScriptedModel()
    agent = Agent(name="test", model=model)
    model.enqueue([assistant_message("San Francisco")])
    first = await Runner.run(agent, "Where is the Golden Gate Bridge?", session=session)
    assert first.final_output == "San Francisco"
    model.enqueue([assistant_message("California")])
    second = await Runner.run(agent, "Which state is it in?", session=session)
    assert second.final_output == "California"
    sent = model.calls[-1].input
    assert isinstance(sent, list) and len(sent) == 3
    assert texts(await session.get_items())[0::2] == [
        "Where is the Golden Gate Bridge?", "Which state is it in?"]
    await session.storage.close()


async def test_storage_from_a_url_a_store_or_a_storage(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/agents.db"
    async with OpenAIAgentsSession("c", url) as by_url:
        await by_url.add_items(ITEMS[:2])
    store = SessionStorage.from_url(url).store
    assert isinstance(store, KVStore)
    by_store = OpenAIAgentsSession("c", store)
    assert await by_store.get_items() == ITEMS[:2]
    await by_store.close()  # the caller's store stays open
    by_storage = OpenAIAgentsSession("c", SessionStorage(store))
    assert await by_storage.get_items() == ITEMS[:2]
    await store.close()
    with pytest.raises(TypeError, match="store options"):
        OpenAIAgentsSession("c", store, namespace="x")
    with pytest.raises(TypeError, match="session_id"):
        OpenAIAgentsSession("", url)


def test_a_session_from_a_url_serves_every_event_loop(integration_stores: StoreFactory,
                                                      tmp_path: Any) -> None:
    """One ``asyncio.run`` after another, and a thread's own loop while the first still runs
    (how the SDK's ``Runner.run_sync`` and scripts reach a session): one storage serves them
    all, its store keeping the driver's connections per loop."""
    session = OpenAIAgentsSession("loops", store_url(integration_stores, tmp_path))
    seen: list[SessionStorage] = []

    def in_a_thread() -> None:
        async def add() -> None:
            await session.add_items([{"role": "user", "content": "from a thread"}])
            seen.append(session.storage)

        asyncio.run(add())

    async def first() -> None:
        await session.add_items([{"role": "user", "content": "first"}])
        seen.append(session.storage)
        await asyncio.to_thread(in_a_thread)
        await session.add_items([{"role": "user", "content": "again"}])

    async def second() -> list[Any]:
        items = texts(await session.get_items())
        seen.append(session.storage)
        await session.close()
        return items

    asyncio.run(first())
    assert asyncio.run(second()) == ["first", "from a thread", "again"]
    assert len(seen) == 3 and all(storage is seen[0] for storage in seen)


# ---------------------------------------------------------------------- two processes

ROUNDS = 40
POP_EVERY = 4


def _worker(make: Callable[[str], KVStore], namespace: str, name: str, barrier: Any,
            results: Any) -> None:
    """Add ``ROUNDS`` items one call at a time, popping one after every ``POP_EVERY``th."""
    async def run() -> list[str]:
        storage = SessionStorage(make(namespace))
        session = OpenAIAgentsSession("shared", storage)
        popped: list[str] = []
        barrier.wait(timeout=60)
        for i in range(ROUNDS):
            await session.add_items([{"role": "user", "content": f"{name}:{i}"}])
            if i % POP_EVERY == POP_EVERY - 1:
                item = await session.pop_item()
                assert item is not None
                popped.append(str(item["content"]))  # type: ignore[typeddict-item]
        await storage.close()
        return popped

    results.put((name, asyncio.run(run())))


def test_two_processes_add_and_pop_on_one_session(integration_stores: StoreFactory) -> None:
    """Nothing lost, nothing popped twice, and the head counts exactly what is left."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_worker, args=(
        integration_stores.make, integration_stores.namespace, name, barrier, results))
        for name in ("a", "b")]
    for process in processes:
        process.start()
    popped = dict(results.get(timeout=180) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    async def check() -> None:
        storage = SessionStorage(integration_stores.new())
        left = texts(await OpenAIAgentsSession("shared", storage).get_items())
        stored = await storage.load_session("shared")
        head = await storage.load_session("shared", last_messages=1)
        await storage.close()
        everything = left + popped["a"] + popped["b"]
        assert len(everything) == len(set(everything)) == 2 * ROUNDS
        assert set(everything) == {f"{n}:{i}" for n in "ab" for i in range(ROUNDS)}
        for name in "ab":  # each writer's items are left in the order it added them
            mine = [text for text in left if text.startswith(name + ":")]
            assert mine == sorted(mine, key=lambda text: int(text.split(":")[1]))
        assert stored is not None and head is not None
        assert len(left) == stored.message_count == head.message_count == (
            2 * ROUNDS - 2 * (ROUNDS // POP_EVERY))

    asyncio.run(check())
