"""MongoDBStore beside raw PyMongo async doing the same work, on a SecantusDB the bench starts.

Raw side, in its own collection of native documents: put = ``replace_one(upsert)`` of
``{"_id": key, **orjson.loads(value)}``; get = ``find_one`` + drop ``_id`` + ``orjson.dumps``;
put_many = one unordered ``bulk_write`` of 100 ``ReplaceOne(upsert)``; scan = one cursor over
the ``_id`` range sorted on ``_id`` (batches of the same size as our pages). Readers decode the
JSON with orjson on both sides. Ours adds name escaping checks, the expiry check and the TTL
field handling. Ratio = our time / raw time. Set KVSESSIONS_BENCH_MONGODB_URL to bench a real
server instead (the raw and our collections are dropped afterwards).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from pymongo import AsyncMongoClient, ReplaceOne

from benchmarks.harness import BenchContext, concurrently, document, repeat
from kvsessions.kv.mongodb import MongoDBStore
from kvsessions.kv.values import prefix_upper_bound

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.mongo_server import SecantusServer

GET_PUT_TARGET, BATCH_TARGET = 1.25, 1.15
SCAN_DOCS = 20_000
BACKEND = "mongodb"


class RawMongo:
    """Plain PyMongo async calls on native documents, as an application would write them."""

    def __init__(self, collection: Any, page: int) -> None:
        self.collection = collection
        self.page = page

    async def put(self, key: str, value: bytes) -> None:
        await self.collection.replace_one(
            {"_id": key}, {"_id": key, **orjson.loads(value)}, upsert=True)

    async def get(self, key: str) -> bytes | None:
        found = await self.collection.find_one({"_id": key})
        if found is None:
            return None
        del found["_id"]
        return orjson.dumps(found)

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        await self.collection.bulk_write(
            [ReplaceOne({"_id": key}, {"_id": key, **orjson.loads(value)}, upsert=True)
             for key, value in items], ordered=False)

    async def scan(self, prefix: str) -> Any:
        upper = prefix_upper_bound(prefix)
        cursor = self.collection.find({"_id": {"$gte": prefix, "$lt": upper}},
                                      sort=[("_id", 1)], batch_size=self.page)
        async for found in cursor:
            key = found.pop("_id")
            yield key, orjson.dumps(found)


async def run(ctx: BenchContext) -> None:
    if not ctx.wanted(BACKEND):
        return
    url = os.environ.get("KVSESSIONS_BENCH_MONGODB_URL")
    if url:
        await bench(ctx, url)
        return
    with SecantusServer(cache_size="1G") as server:
        await bench(ctx, server.url)


async def bench(ctx: BenchContext, url: str) -> None:
    namespace = "bench_" + uuid.uuid4().hex[:8]
    store = MongoDBStore(url, namespace=namespace)
    await store.open()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    database = client.get_default_database("kvsessions_test")
    raw = RawMongo(database[f"raw_{namespace}"], store.scan_batch_size)
    try:
        await operations(ctx, store, raw)
    finally:
        await database.drop_collection(f"raw_{namespace}")
        await database.drop_collection(namespace)
        await client.close()
        await store.close()


async def operations(ctx: BenchContext, ours: MongoDBStore, raw: RawMongo) -> None:
    n = ctx.n(2000)
    keys = [f"doc:{i:08d}" for i in range(n)]
    values = [orjson.dumps(document(i)) for i in range(n)]

    async def put_ours(i: int) -> None:
        await ours.put(keys[i], values[i])

    async def put_raw(i: int) -> None:
        await raw.put(keys[i], values[i])

    await row(ctx, "put", n, lambda: repeat(n, put_ours), lambda: repeat(n, put_raw),
              GET_PUT_TARGET)

    async def get_ours(i: int) -> None:
        orjson.loads(await ours.get(keys[i]) or b"")

    async def get_raw(i: int) -> None:
        orjson.loads(await raw.get(keys[i]) or b"")

    await row(ctx, "get", n, lambda: repeat(n, get_ours), lambda: repeat(n, get_raw),
              GET_PUT_TARGET)
    await row(ctx, "16 concurrent gets", n, lambda: concurrently(n, 16, get_ours),
              lambda: concurrently(n, 16, get_raw), GET_PUT_TARGET)

    batches = max(1, n // 100)

    async def many(target: Any) -> None:
        for b in range(batches):
            await target.put_many([(keys[i], values[i])
                                   for i in range(b * 100, min(n, b * 100 + 100))])

    await row(ctx, "put_many(100)", batches * 100, lambda: many(ours), lambda: many(raw),
              BATCH_TARGET)

    total = ctx.n(SCAN_DOCS)
    for start in range(0, total, 1000):
        chunk = [(f"scan:{i:08d}", values[i % n]) for i in range(start, min(total, start + 1000))]
        await ours.put_many(chunk)
        await raw.put_many(chunk)

    async def scan(source: Any) -> None:
        count = 0
        async for _, value in source.scan("scan:"):
            orjson.loads(value)
            count += 1
        assert count == total, count

    await row(ctx, f"ordered scan of {total:,}", total, lambda: scan(ours), lambda: scan(raw),
              BATCH_TARGET)


async def row(ctx: BenchContext, operation: str, count: int,
              ours: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]],
              target: float) -> None:
    ours_rate, raw_rate = await ctx.paired(count, ours, raw)
    ctx.row("kv-mongodb", operation, BACKEND, ours_rate, raw_rate, target=target)
