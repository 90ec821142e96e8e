"""Listing through the index (issue 12) on SQLite, PostgreSQL and Redis, at growing store sizes.

* list: ``list_sessions(limit=100)`` with 1,000 / 100,000 / 1,000,000 sessions stored (sizes
  times ``--scale``; ``KVSESSIONS_BENCH_LISTING_SIZES=1000,100000`` picks them). The raw column
  is the same call at the smallest size, so the ratio is "time at this size / time at the
  smallest" (target 1.5); the note gives the time per call against the absolute target
  (SQLite 3 ms, PostgreSQL and Redis 6 ms).
* archived: ``list_sessions(status="archived", limit=100)`` with 1% of sessions archived,
  beside ``list_sessions(limit=100)`` at the same size (the issue: "costs the same").
* cleanup: ``SessionManager.cleanup_expired_sessions()`` with 1,000 expired sessions among the
  largest size (one run; ops/s = expired sessions marked per second).
* append: ``append_message`` with the index beside the same call with the index writes turned
  off (what an append cost before the index; target 1.2). Compare with the append row of the
  ``sessions`` section.

Sessions are filled with ``put_many`` (heads and their index entries, as the session layer
writes them), not timed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import BenchContext
from benchmarks.sessions import POSTGRES_URL, REDIS_URL, _drop_redis
from kvsessions.documents.codec import format_timestamp
from kvsessions.documents.keys import session_key
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.kv.base import KVStore
from kvsessions.sessions.index import ENTRY, SessionIndex, head_entries
from kvsessions.sessions.manager import SessionManager
from kvsessions.sessions.storage import SessionStorage

SECTION = "listing"
GROWTH_TARGET, APPEND_TARGET = 1.5, 1.2
MS_TARGET = {"sqlite": 3.0, "postgresql": 6.0, "redis": 6.0}
SIZES = [int(size) for size in os.environ.get(
    "KVSESSIONS_BENCH_LISTING_SIZES", "1000,100000,1000000").split(",")]
#: Recent, so that only the sessions the cleanup row adds (30 days old) have expired.
BASE = datetime.now(UTC).replace(microsecond=0)
FILL_BATCH = 2000


async def run(ctx: BenchContext) -> None:
    for backend in ("sqlite", "postgresql", "redis"):
        if not ctx.wanted(backend):
            continue
        async with AsyncExitStack() as stack:
            store = await open_backend(backend, stack)
            await bench(ctx, backend, store)


async def open_backend(backend: str, stack: AsyncExitStack) -> KVStore:
    namespace = "bench_listing_" + uuid.uuid4().hex[:8]
    if backend == "sqlite":
        from kvsessions.kv.sqlite import SQLiteStore

        folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-"))
        stack.callback(shutil.rmtree, folder, True)
        sqlite = SQLiteStore(folder / "sessions.db", namespace=namespace)
        await sqlite.open()
        stack.push_async_callback(sqlite.close)
        return sqlite
    if backend == "postgresql":
        import asyncpg

        from kvsessions.kv.postgresql import PostgreSQLStore

        pg = PostgreSQLStore(POSTGRES_URL, namespace=namespace, max_pool_size=4)
        await pg.open()

        async def drop() -> None:
            connection = await asyncpg.connect(POSTGRES_URL)
            await connection.execute(f'DROP TABLE IF EXISTS "{namespace}"')
            await connection.close()

        stack.push_async_callback(drop)
        stack.push_async_callback(pg.close)
        return pg
    from kvsessions.kv.redis import RedisStore

    redis = RedisStore(REDIS_URL, namespace=namespace)
    await redis.open()
    stack.push_async_callback(redis.close)
    stack.push_async_callback(_drop_redis, redis)
    return redis


def head_items(index: int, spread: int, *, status: str | None = None,
               updated: datetime | None = None) -> list[tuple[str, bytes]]:
    """A session head and its index entries, as the session layer stores them."""
    session_id = f"bench{index:08d}"
    when = updated or BASE + timedelta(seconds=(index * 7919) % spread)
    document = {"kind": "session", "v": 1, "session_id": session_id, "model": "bench-model",
                "created_at": format_timestamp(BASE), "updated_at": format_timestamp(when),
                "message_count": 0,
                "status": status or ("archived" if index % 100 == 0 else "active"),
                "metadata": {"i": index}}
    items = [(f"session:{session_id}", orjson.dumps(document))]
    items += [(entry, ENTRY) for entry in sorted(head_entries(document))]
    return items


async def fill(store: KVStore, first: int, last: int, spread: int) -> None:
    batch: list[tuple[str, bytes]] = []
    for index in range(first, last):
        batch += head_items(index, spread)
        if len(batch) >= FILL_BATCH:
            await store.put_many(batch)
            batch = []
    if batch:
        await store.put_many(batch)


async def bench(ctx: BenchContext, backend: str, store: KVStore) -> None:
    storage = SessionStorage(store)
    await storage.list_sessions()  # a new store: its index is complete from the start
    sizes = [ctx.n(size) for size in SIZES]
    spread = max(sizes)
    calls = max(5, ctx.n(50))
    stored = 0
    smallest: dict[str | None, float] = {}
    all_rate = 0.0
    for size in sizes:
        started = time.perf_counter()
        await fill(store, stored, size, spread)
        stored = size
        print(f"  ({backend}: {size:,} sessions stored in {time.perf_counter() - started:.0f} s)",
              flush=True)
        for status in (None, "archived"):
            expected = min(100, size if status is None else (size + 99) // 100)

            async def listing(status: str | None = status, expected: int = expected) -> None:
                for _ in range(calls):
                    assert len(await storage.list_sessions(status, limit=100)) == expected

            rate = await ctx.rate(calls, listing)
            ms = 1000 / rate
            verdict = "ok" if ms <= MS_TARGET[backend] else "MISS"
            if status is None:
                smallest.setdefault(status, rate)
                all_rate = rate
                ctx.row(SECTION, f"list_sessions(limit=100) of {size:,}", backend, rate,
                        smallest[status], target=GROWTH_TARGET,
                        note=f"{ms:.2f} ms/call, target {MS_TARGET[backend]:g} ms: {verdict}; "
                             f"raw = the same at {sizes[0]:,}")
            else:
                ctx.row(SECTION, f'list_sessions("archived", limit=100) of {size:,}, 1% '
                        f"archived", backend, rate, all_rate, target=GROWTH_TARGET,
                        note=f"{ms:.2f} ms/call ({expected} listed), target "
                             f"{MS_TARGET[backend]:g} ms: {verdict}; raw = all statuses at "
                             f"this size")
    await bench_cleanup(ctx, backend, storage, store, stored)
    await bench_append(ctx, backend, storage)


async def bench_cleanup(ctx: BenchContext, backend: str, storage: SessionStorage,
                        store: KVStore, stored: int) -> None:
    expired = ctx.n(1000)
    old = BASE - timedelta(days=30)
    batch: list[tuple[str, bytes]] = []
    for index in range(stored, stored + expired):
        batch += head_items(index, 1, status="active", updated=old + timedelta(seconds=index))
    await store.put_many(batch)
    manager = SessionManager(storage, expiry_hours=24 * 7)
    started = time.perf_counter()
    assert await manager.cleanup_expired_sessions() == expired
    seconds = time.perf_counter() - started
    ctx.row(SECTION, f"cleanup_expired_sessions, {expired:,} expired among {stored:,}",
            backend, expired / seconds, None, note=f"{seconds * 1000:.0f} ms in all")


async def bench_append(ctx: BenchContext, backend: str, storage: SessionStorage) -> None:
    session = ChatSession.create("bench-model")
    session.add_message("user", "hello")
    await storage.save_session(session)
    appends = ctx.n(300)

    async def append() -> None:
        for i in range(appends):
            await storage.append_message(session.session_id, ChatMessage.create(
                session.session_id, "user", f"appended message {i}"))

    async def append_without_index() -> None:
        index = storage._index
        storage._index = _NoIndex(index)  # what an append wrote before the index
        try:
            await append()
        finally:
            storage._index = index

    ours, raw = await ctx.paired(appends, append, append_without_index)
    ctx.row(SECTION, "append_message with the index vs without", backend, ours, raw,
            target=APPEND_TARGET, note="raw = the same appends with no index writes")


class _NoIndex(SessionIndex):
    """An append as it was before the index: ``put_if_absent`` of the message, then one
    compare-and-set of the head."""

    def __init__(self, index: SessionIndex) -> None:
        super().__init__(index._raw, index._decode)

    async def change(self, session_id: str, head: Any, new: Any, encoded: bytes,
                     create: Any = None) -> bool:
        for key, value in create or ():  # before the index: the message, then the head
            await self._raw.put_if_absent(key, value)
        return await self._raw.compare_and_set(session_key(session_id),
                                               None if head is None else head[0], encoded)
