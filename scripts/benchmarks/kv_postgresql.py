"""PostgreSQLStore beside raw asyncpg doing the same work on a plain jsonb table.

Raw side, in its own table ``(key text COLLATE "C" PRIMARY KEY, value jsonb NOT NULL)``, with
asyncpg's default (text) jsonb codec, as an application would write it: put = one upsert;
get = one SELECT; put_many = one ``unnest`` upsert of 100 (asyncpg's fastest batch); scan =
keyset pages of the same size as ours (``key > $1 AND key < $2 ORDER BY key LIMIT n``). The
sequential rows use one raw connection, the strictest baseline (no pool at all); 16 concurrent
gets use an ``asyncpg.Pool`` of the same size as ours, with its per-release reset query turned
off so that it too makes one round trip per get. Every operation includes orjson encoding
(writes) or decoding (reads) on both sides. Our side also filters expired rows and carries the
``raw`` column. Ratio = our time / raw time. Server: bash scripts/services.sh (or
KVSESSIONS_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from benchmarks.harness import BenchContext, concurrently, decode_scan, document, repeat
from kvsessions.kv.postgresql import PostgreSQLStore

GET_PUT_TARGET, BATCH_TARGET = 1.25, 1.15
SCAN_DOCS = 20_000
URL = os.environ.get("KVSESSIONS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POOL_SIZE = 10


async def _no_reset(connection: Any) -> None:
    """Raw pool: skip asyncpg's reset query on release (nothing here changes session state)."""


class RawPostgres:
    """Plain asyncpg calls on a jsonb table."""

    def __init__(self, connection: Any, pool: Any, table: str, page: int) -> None:
        self.connection = connection
        self.pool = pool
        self.table = f'"{table}"'
        self.page = page
        self.sql_put = (f"INSERT INTO {self.table} (key, value) VALUES ($1, $2) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
        self.sql_get = f"SELECT value FROM {self.table} WHERE key = $1"
        self.sql_put_many = (f"INSERT INTO {self.table} (key, value) SELECT * FROM "
                             "unnest($1::text[], $2::jsonb[]) ON CONFLICT (key) DO UPDATE "
                             "SET value = EXCLUDED.value")
        self.sql_page = (f"SELECT key, value FROM {self.table} WHERE key > $1 AND key < $2 "
                         "ORDER BY key LIMIT $3")

    async def create(self) -> None:
        await self.connection.execute(
            f'CREATE TABLE {self.table} (key text COLLATE "C" PRIMARY KEY, value jsonb NOT NULL)')

    async def drop(self) -> None:
        await self.connection.execute(f"DROP TABLE IF EXISTS {self.table}")

    async def put(self, key: str, value: bytes) -> None:
        await self.connection.execute(self.sql_put, key, value.decode())

    async def get(self, key: str) -> str | None:
        value: str | None = await self.connection.fetchval(self.sql_get, key)
        return value

    async def get_pooled(self, key: str) -> str | None:
        value: str | None = await self.pool.fetchval(self.sql_get, key)
        return value

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        await self.connection.execute(self.sql_put_many, [key for key, _ in items],
                                      [value.decode() for _, value in items])

    async def scan(self, prefix: str) -> AsyncIterator[tuple[str, str]]:
        low, high = prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
        while True:
            rows = await self.connection.fetch(self.sql_page, low, high, self.page)
            for key, value in rows:
                yield key, value
            if len(rows) < self.page:
                return
            low = rows[-1][0]


async def run(ctx: BenchContext) -> None:
    if ctx.wanted("postgresql"):
        await bench(ctx)


async def bench(ctx: BenchContext) -> None:
    namespace = "bench_" + uuid.uuid4().hex[:8]
    # Both pools open all their connections up front, so no run pays for connecting.
    store = PostgreSQLStore(URL, namespace=namespace, min_pool_size=POOL_SIZE,
                            max_pool_size=POOL_SIZE)
    await store.open()
    connection = await asyncpg.connect(URL)
    pool = await asyncpg.create_pool(URL, min_size=POOL_SIZE, max_size=POOL_SIZE,
                                     reset=_no_reset)
    raw = RawPostgres(connection, pool, f"{namespace}_raw", store.scan_batch_size)
    await raw.create()
    try:
        await operations(ctx, store, raw)
    finally:
        await raw.drop()
        await connection.execute(f'DROP TABLE IF EXISTS "{namespace}"')
        await pool.close()
        await connection.close()
        await store.close()


async def operations(ctx: BenchContext, ours: PostgreSQLStore, raw: RawPostgres) -> None:
    n = ctx.n(2000)
    keys = [f"doc:{i:08d}" for i in range(n)]
    # Untimed warm-up on both sides: statements prepared, types introspected, caches filled.
    warm = [(f"warm:{i:03d}", orjson.dumps(document(i))) for i in range(100)]
    for target in (ours, raw):
        await target.put_many(warm)
        await target.put(warm[0][0], warm[0][1])
        await target.get(warm[0][0])
        [item async for item in target.scan("warm:")]

    async def put_ours(i: int) -> None:
        await ours.put(keys[i], orjson.dumps(document(i)))

    async def put_raw(i: int) -> None:
        await raw.put(keys[i], orjson.dumps(document(i)))

    await row(ctx, "put", n, lambda: repeat(n, put_ours), lambda: repeat(n, put_raw),
              GET_PUT_TARGET)

    async def get_ours(i: int) -> None:
        orjson.loads(await ours.get(keys[i]) or b"")

    async def get_raw(i: int) -> None:
        orjson.loads(await raw.get(keys[i]) or "")

    async def get_raw_pooled(i: int) -> None:
        orjson.loads(await raw.get_pooled(keys[i]) or "")

    await row(ctx, "get", n, lambda: repeat(n, get_ours), lambda: repeat(n, get_raw),
              GET_PUT_TARGET)

    batches = max(1, n // 100)

    async def many(target: Any) -> None:
        for b in range(batches):
            await target.put_many(
                [(keys[i], orjson.dumps(document(i))) for i in range(b * 100, b * 100 + 100)
                 if i < n])

    await row(ctx, "put_many(100)", batches * 100, lambda: many(ours), lambda: many(raw),
              BATCH_TARGET)

    total = ctx.n(SCAN_DOCS)
    docs = [orjson.dumps(document(i)) for i in range(min(n, total))]
    for start in range(0, total, 1000):
        chunk = [(f"scan:{i:08d}", docs[i % len(docs)])
                 for i in range(start, min(total, start + 1000))]
        await ours.put_many(chunk)
        await raw.put_many(chunk)

    def scan_ours() -> Awaitable[None]:
        return decode_scan(ours, "scan:", total)

    def scan_raw() -> Awaitable[None]:
        return decode_scan(raw, "scan:", total)

    await row(ctx, f"ordered scan of {total:,}", total, scan_ours, scan_raw, BATCH_TARGET)
    # Last, so that the sequential rows run on one warm connection: the first statement on
    # each fresh server process costs ~10 ms (catalog caches, planning), on either side.
    await row(ctx, "16 concurrent gets", n, lambda: concurrently(n, 16, get_ours),
              lambda: concurrently(n, 16, get_raw_pooled), GET_PUT_TARGET)


async def row(ctx: BenchContext, operation: str, count: int,
              ours: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]],
              target: float) -> None:
    ours_rate, raw_rate = await ctx.paired(count, ours, raw)
    ctx.row("kv-postgresql", operation, "postgresql", ours_rate, raw_rate, target=target)
