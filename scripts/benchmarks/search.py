"""Message search (issue 14) on SQLite (FTS5) and PostgreSQL (GIN index), natively, beside the
streaming scan that stores without an index use, over the same messages in the same run.

* search: ``search_messages(word, limit=20)`` over N messages (default 100,000;
  ``KVSESSIONS_BENCH_SEARCH_MESSAGES`` sets it; ``--scale`` scales only the number of calls),
  a word of a stored message (each word is in about 0.2 % of them); the absolute target is
  20 ms a call (note column).
  The raw column is the scan fallback (``kv.text_search.scan_search``) doing the same search
  on the same store, so the ratio is "native time / scan time".
* two words: the same with two words of one stored message (few hits).
* one session: ``search_messages(word, session_id=...)`` within one session of 100 messages.
Each query comes from a stored message, so each finds at least one.
* append, index kept: ``append_message`` on the store with the text index, beside the same
  call on a second store with the same messages and no index, run by run (what keeping the
  index adds to a write).

Messages are 1,000 sessions x 100, each 12 words drawn from 6,000, filled with ``put_many``
(not timed). The first native search makes the index (timed once, printed apart).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import orjson

from benchmarks.harness import BenchContext
from benchmarks.sessions import POSTGRES_URL
from kvsessions.documents.keys import message_key, message_prefix
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.kv.base import KVStore
from kvsessions.kv.text_search import query_words, scan_search
from kvsessions.sessions.search import MESSAGE_TEXT
from kvsessions.sessions.storage import SessionStorage

SECTION = "search"
MS_TARGET = 20.0
MESSAGES = int(os.environ.get("KVSESSIONS_BENCH_SEARCH_MESSAGES", "100000"))
PER_SESSION = 100
VOCABULARY = [f"word{n:04d}" for n in range(6000)]
FILL_BATCH = 2000


async def run(ctx: BenchContext) -> None:
    for backend in ("sqlite", "postgresql"):
        if not ctx.wanted(backend):
            continue
        async with AsyncExitStack() as stack:
            store = await open_backend(backend, stack)
            plain = await open_backend(backend, stack)
            await bench(ctx, backend, store, plain)


async def open_backend(backend: str, stack: AsyncExitStack) -> KVStore:
    namespace = "bench_search_" + uuid.uuid4().hex[:8]
    if backend == "sqlite":
        from kvsessions.kv.sqlite import SQLiteStore

        folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-"))
        stack.callback(shutil.rmtree, folder, True)
        sqlite = SQLiteStore(folder / "sessions.db", namespace=namespace)
        await sqlite.open()
        stack.push_async_callback(sqlite.close)
        return sqlite
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


def message(session: int, index: int, rng: random.Random) -> tuple[str, bytes]:
    session_id, message_id = f"bench{session:06d}", f"m{index:04d}"
    document = {"kind": "message", "v": 1, "message_id": message_id, "session_id": session_id,
                "role": "user" if index % 2 == 0 else "assistant",
                "content": " ".join(rng.choice(VOCABULARY) for _ in range(12)),
                "created_at": "2026-11-21T10:00:00.000000Z", "metadata": {}}
    return message_key(session_id, message_id), orjson.dumps(document)


async def fill(store: KVStore) -> list[tuple[str, list[str]]]:
    """Store the messages; return a sample of (session id, words) to draw queries from, so
    that every query finds at least one message."""
    rng = random.Random(14)
    batch: list[tuple[str, bytes]] = []
    sample: list[tuple[str, list[str]]] = []
    for number in range(MESSAGES):
        key, value = message(number // PER_SESSION, number % PER_SESSION, rng)
        batch.append((key, value))
        if number % 97 == 0:
            document = orjson.loads(value)
            sample.append((document["session_id"], document["content"].split()))
        if len(batch) >= FILL_BATCH:
            await store.put_many(batch)
            batch = []
    if batch:
        await store.put_many(batch)
    return sample


async def bench(ctx: BenchContext, backend: str, store: KVStore, plain: KVStore) -> None:
    """``store`` gets the text index; ``plain``, holding the same messages, never does."""
    started = time.perf_counter()
    sample = await fill(store)
    await fill(plain)
    print(f"  ({backend}: {MESSAGES:,} messages stored twice in "
          f"{time.perf_counter() - started:.0f} s)", flush=True)
    storage = SessionStorage(store)
    started = time.perf_counter()
    await storage.search_messages(VOCABULARY[0])  # makes the index
    print(f"  ({backend}: the {store.text_search} index made in "
          f"{time.perf_counter() - started:.1f} s)", flush=True)
    appends = max(20, ctx.n(500))
    with_index, without = await ctx.paired(appends, await appending(storage, appends),
                                           await appending(SessionStorage(plain), appends))
    ctx.row(SECTION, "append, index kept", backend, with_index, without,
            note="raw: the same append_message on a store without the text index")
    calls = max(5, ctx.n(50))
    scans = max(1, ctx.n(3))
    rng = random.Random(7)
    picks = [rng.choice(sample) for _ in range(calls)]
    cases = {
        "search 1 word": [(rng.choice(words), None) for _, words in picks],
        "search 2 words": [(" ".join(rng.sample(words, 2)), None) for _, words in picks],
        "search 1 session": [(rng.choice(words), session_id) for session_id, words in picks],
    }
    for operation, queries in cases.items():
        ours, scanned, hits = await measure(ctx, store, storage, queries, scans)
        ms = 1000 / ours
        verdict = "ok" if ms <= MS_TARGET else "MISS"
        ctx.row(SECTION, operation, backend, ours, scanned,
                note=f"{ms:.1f} ms/call (target {MS_TARGET:g} ms: {verdict}); scan "
                     f"{1000 / scanned:,.0f} ms; {hits:.0f} hits/call; {MESSAGES:,} messages")


async def appending(storage: SessionStorage, appends: int) -> Callable[[], Awaitable[None]]:
    """A run of ``appends`` append_message calls on a new session of ``storage``."""
    session = ChatSession.create("bench-model")
    await storage.save_session(session)
    rng = random.Random(3)
    contents = [" ".join(rng.choice(VOCABULARY) for _ in range(12)) for _ in range(appends)]

    async def append() -> None:
        for content in contents:
            await storage.append_message(session.session_id,
                                         ChatMessage.create(session.session_id, "user", content))

    return append


async def measure(ctx: BenchContext, store: KVStore, storage: SessionStorage,
                  queries: list[tuple[str, str | None]], scans: int
                  ) -> tuple[float, float, float]:
    """Calls/s native, calls/s by the scan, and hits per native call."""
    found: list[int] = []

    async def native() -> None:
        for query, session_id in queries:
            found.append(len(await storage.search_messages(query, session_id=session_id)))

    async def scan() -> None:
        for query, session_id in queries[:scans]:
            within = message_prefix(session_id) if session_id else MESSAGE_TEXT.prefix
            await scan_search(store, MESSAGE_TEXT, query_words(query), within, 20, None)

    ours = await ctx.rate(len(queries), native)
    scanned = await ctx.rate(scans, scan)
    return ours, scanned, sum(found) / len(found)
