"""One storage, many event loops: frameworks call ``asyncio.run`` again and again, threads run
loops of their own. The KV level is in the conformance suite (``kvsessions.testing``); here the
session layer on every backend, and the clear refusal where a caller's client binds a store
to one loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kvsessions.documents.models import ChatSession
from kvsessions.errors import EventLoopError
from kvsessions.kv.postgresql import PostgreSQLStore
from kvsessions.kv.redis import RedisStore
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.backends.redis import REDIS_URL


def test_session_storage_serves_one_loop_after_another(store_factory: StoreFactory) -> None:
    storage = SessionStorage(store_factory.new())
    session = ChatSession.create("model-x")
    session.add_message("user", "first")

    async def save() -> None:
        await storage.save_session(session)

    async def append() -> None:
        loaded = await storage.load_session(session.session_id)
        assert loaded is not None
        loaded.add_message("assistant", "second")
        await storage.save_session(loaded)

    async def read() -> list[str]:
        loaded = await storage.load_session(session.session_id)
        assert loaded is not None
        listed = await storage.list_sessions()
        assert [s.session_id for s in listed] == [session.session_id]
        return [message.content for message in loaded.messages]

    async def close() -> None:
        await storage.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()

    try:
        asyncio.run(save())
        asyncio.run(append())
        assert asyncio.run(read()) == ["first", "second"]
    finally:
        asyncio.run(close())


def test_session_storage_serves_two_threads_at_once(store_factory: StoreFactory) -> None:
    storage = SessionStorage(store_factory.new())
    if not storage.store.loops_at_once:
        pytest.skip("this store serves one loop at a time (the conformance suite checks "
                    "its refusal)")
    start = threading.Barrier(2, timeout=30)
    saved: dict[int, str] = {}
    errors: list[BaseException] = []

    async def work(thread: int) -> None:
        await asyncio.to_thread(start.wait)  # both first calls open the store at once
        session = ChatSession.create(f"model-{thread}")
        for i in range(5):
            session.add_message("user", f"thread {thread} message {i}")
            await storage.save_session(session)
        saved[thread] = session.session_id

    def run(thread: int) -> None:
        try:
            asyncio.run(work(thread))
        except BaseException as exc:
            errors.append(exc)

    async def check_and_close() -> None:
        try:
            for thread, session_id in saved.items():
                loaded = await storage.load_session(session_id)
                assert loaded is not None and len(loaded.messages) == 5
                assert loaded.messages[4].content == f"thread {thread} message 4"
        finally:
            await storage.close()
            if store_factory.cleanup is not None:
                await store_factory.cleanup()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a loop hangs"
    assert not errors, errors
    asyncio.run(check_and_close())


def test_a_given_redis_client_refuses_another_loop_by_name() -> None:
    from redis.asyncio import Redis

    holder: dict[str, object] = {}

    async def first() -> None:
        client = Redis.from_url(REDIS_URL)
        holder["client"] = client
        store = RedisStore(client=client, namespace="t_given_client_loops")
        holder["store"] = store
        await store.put("k", b"{}")

    async def second() -> None:
        store = holder["store"]
        assert isinstance(store, RedisStore)
        with pytest.raises(EventLoopError, match=r"given a client that belongs to event loop "
                           r"0x[0-9a-f]+ in thread .MainThread.; it cannot serve event loop"):
            await store.get("k")

    asyncio.run(first())
    asyncio.run(second())  # the first loop has ended, yet the client is still that loop's

    async def cleanup() -> None:
        client = Redis.from_url(REDIS_URL)
        try:
            await client.delete("kvs:{t_given_client_loops}:v:k", "kvs:{t_given_client_loops}:idx")
        finally:
            await client.aclose()

    asyncio.run(cleanup())


def test_a_given_postgresql_pool_refuses_another_loop_by_name() -> None:
    import asyncpg

    namespace = "t_given_pool_loops"
    holder: dict[str, object] = {}

    async def first() -> None:
        pool = await asyncpg.create_pool(POSTGRES_URL, min_size=1, max_size=2)
        holder["pool"] = pool
        store = PostgreSQLStore(pool=pool, namespace=namespace)
        holder["store"] = store
        await store.put("k", b"{}")

    async def second() -> None:
        store = holder["store"]
        assert isinstance(store, PostgreSQLStore)
        with pytest.raises(EventLoopError, match="given a pool that belongs to event loop"):
            await store.get("k")

    try:
        asyncio.run(first())
        asyncio.run(second())
    finally:
        asyncio.run(drop_tables(POSTGRES_URL, {namespace}))
