"""SessionStorage on each backend: append cost against history length, loading a session beside
the raw scan of the same keys, and listing sessions.

* append: ``append_message`` to a session of 10,000 messages beside the same call on a session
  of 10 (ratio = time at 10,000 / time at 10; target 1.5). Each append is one get of the head,
  one ``put_if_absent`` of the message and one ``compare_and_set`` of the head.
* concurrent appends: 16 tasks appending to 16 sessions at once beside one task doing as many
  appends (ratio = time of the 16 / time of the one; target 0.33: three times the throughput).
* load: ``load_session`` of a 1,000-message session of 2 KB message documents (one get of the
  head, one prefix scan, JSON parse, field checks and ``ChatMessage`` objects) beside the raw
  driver scanning the same ``message:{sid}:`` keys of the same table with orjson decoding each
  value into a list (target 1.3).
  MongoDB's raw side is ``find`` returning BSON-decoded dicts (its driver's decode).
* update / pop: ``update_message`` and ``pop_message`` on the 10,000-message session beside
  ``append_message`` on it (target 1.5). Where the store has multi-key transactions (all
  four here but MongoDB) an append is a get of the head and one ``compare_and_set_with``
  (head, message, index entries); an update one ``get_many`` (head and message) and one
  ``compare_and_set_with`` swapping the message; a pop one ``get_and_last`` (the head and
  the latest message: one statement on PostgreSQL) and one ``compare_and_set_with``
  deleting the message if it is still the one read. On MongoDB an update is a get and a
  compare-and-set of the message, then of the head; a pop a one-key reverse scan, a
  compare-and-set deleting the message and one of the head.
* list: ``list_sessions(limit=100)`` over 10,000 session heads (read through the index: about
  100 entries and heads) beside the raw scan of every head with orjson decoding.

Servers: bash scripts/services.sh (PostgreSQL, Redis); MongoDB runs on a SecantusDB started
here unless KVSESSIONS_BENCH_MONGODB_URL is set. ``--only sqlite`` etc. picks backends.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import BenchContext
from kvsessions.documents.codec import session_to_document
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.kv.base import KVStore
from kvsessions.kv.partitions import partition_of, run_of_range
from kvsessions.kv.redis_layout import partition_names
from kvsessions.kv.values import prefix_upper_bound
from kvsessions.sessions.index import head_entries
from kvsessions.sessions.storage import SessionStorage

APPEND_TARGET, LOAD_TARGET, EDIT_TARGET = 1.5, 1.3, 1.5
#: Appenders to as many sessions at once; their throughput is at least 3x one appender's.
CONCURRENT_APPENDERS, CONCURRENT_TARGET = 16, 0.33
SECTION = "sessions"
POSTGRES_URL = os.environ.get("KVSESSIONS_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PAGE = 500
#: Message text making each message document about 2 KB, the size PERF-NOTES measures with.
FILLER = "lorem ipsum " * 150

RawScan = Callable[[str], AsyncIterator[Any]]


async def run(ctx: BenchContext) -> None:
    for backend in ("sqlite", "postgresql", "redis", "mongodb"):
        if not ctx.wanted(backend):
            continue
        async with AsyncExitStack() as stack:
            store, raw_scan = await open_backend(backend, stack)
            await bench(ctx, backend, store, raw_scan)


# ---------------------------------------------------------------------- backends

async def open_backend(backend: str, stack: AsyncExitStack) -> tuple[KVStore, RawScan]:
    """Our store (open, in a fresh namespace) and a raw scan of its keys through its driver."""
    namespace = "bench_sessions_" + uuid.uuid4().hex[:8]
    if backend == "sqlite":
        from kvsessions.kv.sqlite import SQLiteStore

        folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-"))
        stack.callback(shutil.rmtree, folder, True)
        sqlite = SQLiteStore(folder / "sessions.db", namespace=namespace)
        await sqlite.open()
        stack.push_async_callback(sqlite.close)
        sql = (f'SELECT key, value FROM "{namespace}" WHERE key > ? AND key < ? '
               "ORDER BY key LIMIT ?")

        async def sqlite_scan(prefix: str) -> AsyncIterator[Any]:
            low, high = prefix, prefix_upper_bound(prefix)
            while True:  # the prefix itself is never a key here, so "> prefix" is ">="
                rows = list(await sqlite._conn.execute_fetchall(sql, (low, high, PAGE)))
                for key, value in rows:
                    yield key, orjson.loads(value)
                if len(rows) < PAGE:
                    return
                low = rows[-1][0]

        return sqlite, sqlite_scan
    if backend == "postgresql":
        import asyncpg

        from kvsessions.kv.postgresql import PostgreSQLStore

        pg = PostgreSQLStore(POSTGRES_URL, namespace=namespace, max_pool_size=4)
        await pg.open()
        connection = await asyncpg.connect(POSTGRES_URL)
        stack.push_async_callback(connection.close)
        stack.push_async_callback(connection.execute, f'DROP TABLE IF EXISTS "{namespace}"')
        stack.push_async_callback(pg.close)
        sql = (f'SELECT key, value FROM "{namespace}" WHERE key > $1 AND key < $2 '
               "ORDER BY key LIMIT $3")

        async def pg_scan(prefix: str) -> AsyncIterator[Any]:
            low, high = prefix, prefix_upper_bound(prefix)
            while True:
                rows = await connection.fetch(sql, low, high, PAGE)
                for key, value in rows:
                    yield key, orjson.loads(value)
                if len(rows) < PAGE:
                    return
                low = rows[-1][0]

        return pg, pg_scan
    if backend == "redis":
        from kvsessions.kv.redis import RedisStore

        redis = RedisStore(REDIS_URL, namespace=namespace)
        await redis.open()
        stack.push_async_callback(redis.close)
        stack.push_async_callback(_drop_redis, redis)

        async def redis_scan(prefix: str) -> AsyncIterator[Any]:
            async for key, value in raw_redis_scan(redis, prefix):
                yield key, orjson.loads(value)

        return redis, redis_scan
    from kvsessions.kv.mongodb import MongoDBStore

    url = os.environ.get("KVSESSIONS_BENCH_MONGODB_URL")
    if not url:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from tests.mongo_server import SecantusServer

        server = stack.enter_context(SecantusServer(cache_size="1G"))
        url = server.url
    mongo = MongoDBStore(url, namespace=namespace)
    await mongo.open()
    stack.push_async_callback(mongo.close)
    stack.push_async_callback(lambda: mongo._collection.drop())

    async def mongo_scan(prefix: str) -> AsyncIterator[Any]:
        cursor = mongo._collection.find(
            {"_id": {"$gte": prefix, "$lt": prefix_upper_bound(prefix)}},
            sort=[("_id", 1)], batch_size=PAGE)
        async for found in cursor:
            yield found["_id"], found

    return mongo, mongo_scan


async def _drop_redis(store: Any) -> None:
    await store._drop_namespace()


async def raw_redis_scan(store: Any, prefix: str) -> AsyncIterator[tuple[str, bytes]]:
    """redis-py reading the store's layout (``kvsessions.kv.redis_layout``) itself: a prefix
    inside one run from its partition's sorted set (ZRANGEBYLEX pages + MGET), any other
    prefix through the directory, whose runs here are single keys (session heads)."""
    client = store._client
    run = run_of_range(prefix, prefix_upper_bound(prefix))
    index = partition_names(store.namespace, partition_of(run or prefix))
    sorted_set = index.index if run is not None else store._directory
    low = b"[" + prefix.encode()
    high = b"(" + (prefix_upper_bound(prefix) or "").encode()
    while True:
        members = await client.zrangebylex(sorted_set, low, high, 0, PAGE)
        if not members:
            return
        if run is not None:
            found = await client.mget([index.value_prefix + member for member in members])
        else:
            names = [partition_names(store.namespace, partition_of(m.decode())).value_prefix + m
                     for m in members]
            found = await (client.mget_nonatomic(names) if store._cluster
                           else client.mget(names))
        for member, value in zip(members, found, strict=True):
            if value is not None:
                yield member.decode(), value
        if len(members) < PAGE:
            return
        low = b"(" + members[-1]


# ---------------------------------------------------------------------- the rows

async def bench(ctx: BenchContext, backend: str, store: KVStore, raw_scan: RawScan) -> None:
    storage = SessionStorage(store)
    small = await stored_session(storage, 10)
    big = await stored_session(storage, ctx.n(10_000))
    appends = ctx.n(300)

    def appender(session: ChatSession) -> Callable[[], Awaitable[None]]:
        async def append() -> None:
            for i in range(appends):
                await storage.append_message(session.session_id, ChatMessage.create(
                    session.session_id, "user", f"appended message {i}"))
        return append

    ours, raw = await ctx.paired(appends, appender(big), appender(small))
    ctx.row(SECTION, f"append_message at {ctx.n(10_000):,} msgs vs at 10", backend, ours, raw,
            target=APPEND_TARGET, note="raw column = the same call at 10 messages")
    await bench_edits(ctx, backend, storage, big, appender(big), appends)

    writers = [await stored_session(storage, 10) for _ in range(CONCURRENT_APPENDERS)]
    rounds = max(2, appends // CONCURRENT_APPENDERS)

    async def one_appender() -> None:
        await appender_of(writers[0], rounds * CONCURRENT_APPENDERS)

    async def many_appenders() -> None:
        await asyncio.gather(*(appender_of(session, rounds) for session in writers))

    async def appender_of(session: ChatSession, count: int) -> None:
        for i in range(count):
            await storage.append_message(session.session_id, ChatMessage.create(
                session.session_id, "user", f"concurrent message {i}"))

    ours, raw = await ctx.paired(rounds * CONCURRENT_APPENDERS, many_appenders, one_appender)
    ctx.row(SECTION, f"{CONCURRENT_APPENDERS} concurrent appenders vs one", backend, ours, raw,
            target=CONCURRENT_TARGET, note="ops/s = appends/s in all; raw = one appender "
            "doing as many; target: at least 3x the throughput of one")

    loaded = await stored_session(storage, 1000)
    loads = max(3, ctx.n(20))
    prefix = f"message:{loaded.session_id}:"

    async def load_ours() -> None:
        for _ in range(loads):
            session = await storage.load_session(loaded.session_id)
            assert session is not None and len(session.messages) == 1000

    async def load_raw() -> None:
        for _ in range(loads):
            documents = [document async for _, document in raw_scan(prefix)]
            assert len(documents) == 1000

    ours, raw = await ctx.paired(loads, load_ours, load_raw)
    ctx.row(SECTION, "load_session, 1,000 messages", backend, ours, raw, target=LOAD_TARGET,
            note="raw = prefix scan + decode")

    sessions = ctx.n(10_000)
    await stored_heads(storage, sessions)
    lists = max(3, ctx.n(10))

    async def list_ours() -> None:
        for _ in range(lists):
            assert len(await storage.list_sessions(limit=100)) == 100

    async def list_raw() -> None:
        for _ in range(lists):
            heads = [document async for _, document in raw_scan("session:")]
            assert len(heads) >= sessions

    ours, raw = await ctx.paired(lists, list_ours, list_raw)
    ctx.row(SECTION, f"list_sessions(limit=100) of {sessions:,}", backend, ours, raw,
            note="raw = scan + decode of every head")


async def bench_edits(ctx: BenchContext, backend: str, storage: SessionStorage,
                      big: ChatSession, append: Callable[[], Awaitable[None]],
                      count: int) -> None:
    """``update_message`` and ``pop_message`` on the 10,000-message session beside
    ``append_message`` on it, run by run (pops take back what the appends added)."""
    session_id = big.session_id
    targets = [message.message_id for message in big.messages[-count:]]
    rounds = 0

    async def update() -> None:
        nonlocal rounds
        rounds += 1
        for message_id in targets:
            await storage.update_message(session_id, message_id,
                                         content=f"edited {rounds} " + FILLER)

    ours, raw = await ctx.paired(count, update, append)
    ctx.row(SECTION, f"update_message at {ctx.n(10_000):,} msgs vs append", backend, ours,
            raw, target=EDIT_TARGET, note="raw column = append_message, same session")

    async def pop() -> None:
        for _ in range(count):
            assert await storage.pop_message(session_id) is not None

    ours, raw = await ctx.paired(count, pop, append)
    ctx.row(SECTION, f"pop_message at {ctx.n(10_000):,} msgs vs append", backend, ours, raw,
            target=EDIT_TARGET, note="raw column = append_message, same session")


async def stored_session(storage: SessionStorage, messages: int) -> ChatSession:
    """A session of ``messages`` messages, saved 1,000 at a time (setup, not timed)."""
    session = ChatSession.create("bench-model")
    for i in range(messages):
        session.add_message("user" if i % 2 == 0 else "assistant",
                            f"message {i} " + FILLER)
        if i % 1000 == 999:
            await storage.save_session(session)  # writes only the messages not stored yet
    await storage.save_session(session)
    return session


async def stored_heads(storage: SessionStorage, count: int) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[tuple[str, dict[str, Any]]] = []
    for i in range(count):
        session = ChatSession.create("bench-model", metadata={"i": i})
        session.updated_at = base + timedelta(seconds=(i * 7919) % count)
        document = session_to_document(session)
        batch.append((f"session:{session.session_id}", document))
        # Its index entries, as the session layer writes them (kvsessions.sessions.index).
        batch += [(entry, {"kind": "index", "v": 1})
                  for entry in head_entries(orjson.loads(orjson.dumps(document)))]
        if len(batch) >= 1000:
            await storage._documents.put_documents(batch)
            batch = []
    if batch:
        await storage._documents.put_documents(batch)
