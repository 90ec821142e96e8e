"""SessionStorage on the 3-node Redis Cluster beside the same calls on single-node Redis, both
in the partitioned layout (``kvsessions.kv.redis_layout``): what spreading sessions over a
cluster costs one client. Ratio = cluster time / single-node time (target 1.15).

* append: ``append_message`` to a session of 1,000 messages (one get of the head, the message
  written in the session's partition, one compare-and-set of the head, the index entries moved
  in the index partitions).
* load: ``load_session`` of a 1,000-message session (one get, one scan of one partition).
* append, 16 sessions at once: 16 tasks appending to 16 different sessions, which the cluster
  spreads over its nodes.

Servers: bash scripts/services.sh (Redis on 6379); bash scripts/redis-cluster.sh start (or
KVSESSIONS_TEST_REDIS_URL / KVSESSIONS_TEST_REDIS_CLUSTER_URL).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import AsyncExitStack

from benchmarks.harness import BenchContext
from benchmarks.sessions import stored_session
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.kv.redis import RedisStore
from kvsessions.sessions.storage import SessionStorage

SECTION = "redis_cluster"
TARGET = 1.15
SINGLE_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER_URL = os.environ.get("KVSESSIONS_TEST_REDIS_CLUSTER_URL",
                             "redis+cluster://127.0.0.1:7000")


async def run(ctx: BenchContext) -> None:
    if not ctx.wanted("redis_cluster"):
        return
    async with AsyncExitStack() as stack:
        single = await _opened(stack, SINGLE_URL)
        cluster = await _opened(stack, CLUSTER_URL)
        await bench(ctx, single, cluster)


async def _opened(stack: AsyncExitStack, url: str) -> SessionStorage:
    store = RedisStore(url, namespace="bench_cluster_" + uuid.uuid4().hex[:8])
    await store.open()
    stack.push_async_callback(store.close)
    stack.push_async_callback(store._drop_namespace)
    return SessionStorage(store)


async def bench(ctx: BenchContext, single: SessionStorage, cluster: SessionStorage) -> None:
    history = ctx.n(1000)
    sessions = {storage: await stored_session(storage, history)
                for storage in (single, cluster)}
    appends = ctx.n(300)

    def appender(storage: SessionStorage) -> tuple[SessionStorage, ChatSession]:
        return storage, sessions[storage]

    async def append(storage: SessionStorage, session: ChatSession, count: int) -> None:
        for i in range(count):
            await storage.append_message(session.session_id, ChatMessage.create(
                session.session_id, "user", f"appended message {i}"))

    ours, raw = await ctx.paired(appends, lambda: append(*appender(cluster), appends),
                                 lambda: append(*appender(single), appends))
    ctx.row(SECTION, f"append_message at {history:,} msgs", "redis_cluster", ours, raw,
            target=TARGET, note="raw column = the same call on single-node Redis")

    loads = max(3, ctx.n(20))

    async def load(storage: SessionStorage) -> None:
        session_id = sessions[storage].session_id
        for _ in range(loads):
            loaded = await storage.load_session(session_id)
            assert loaded is not None and len(loaded.messages) >= history

    ours, raw = await ctx.paired(loads, lambda: load(cluster), lambda: load(single))
    ctx.row(SECTION, f"load_session, {history:,} messages", "redis_cluster", ours, raw,
            target=TARGET, note="raw column = the same call on single-node Redis")

    many = {storage: [await stored_session(storage, 10) for _ in range(16)]
            for storage in (single, cluster)}
    per_task = max(1, appends // 16)

    async def append_many(storage: SessionStorage) -> None:
        await asyncio.gather(*(append(storage, session, per_task)
                               for session in many[storage]))

    ours, raw = await ctx.paired(per_task * 16, lambda: append_many(cluster),
                                 lambda: append_many(single))
    ctx.row(SECTION, "append_message, 16 sessions at once", "redis_cluster", ours, raw,
            target=TARGET, note="raw column = the same calls on single-node Redis")
