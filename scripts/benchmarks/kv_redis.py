"""RedisStore on Redis and on Redis Cluster, beside raw redis-py (hiredis) doing the same work.

Raw side, in its own keys under one hash tag: put = SET; get = GET; put_many = one MSET of 100
(the fastest raw batch, 2.8x a pipeline of SETs); scan = the same sorted-set index read as
PERF-NOTES measured it (ZRANGEBYLEX pages + MGET of the values, same page size as ours).
Every operation includes orjson encoding (writes) or decoding (reads) on both sides. Our writes
also keep the index (ZADD) in the same round trip, work the raw SET / MSET does not do.
Keys have the session layer's shape (``message:{sid}:{n}``, 100 per session; the scan covers
20 runs of 1,000 in as many partitions), so our side writes and reads the partitioned layout as
sessions use it; the raw side keeps one sorted set under one hash tag.
Ratio = our time / raw time. Servers: bash scripts/services.sh; bash scripts/redis-cluster.sh
start (or KVSESSIONS_TEST_REDIS_URL / KVSESSIONS_TEST_REDIS_CLUSTER_URL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from benchmarks.harness import BenchContext, concurrently, decode_scan, document, repeat
from kvsessions.kv.redis import RedisStore

GET_PUT_TARGET, BATCH_TARGET = 1.25, 1.15
SCAN_DOCS = 20_000
URLS = {
    "redis": os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "redis_cluster": os.environ.get("KVSESSIONS_TEST_REDIS_CLUSTER_URL",
                                    "redis+cluster://127.0.0.1:7000"),
}


class RawRedis:
    """Plain redis-py calls, as an application keeping its own ordered index would write them."""

    def __init__(self, client: Any, tag: str, page: int) -> None:
        self.client = client
        self.prefix = f"raw:{{{tag}}}:v:".encode()
        self.index = f"raw:{{{tag}}}:idx".encode()
        self.page = page

    async def put(self, key: str, value: bytes) -> None:
        """The value and its index entry in one round trip (a pipeline, no transaction)."""
        pipe = self.client.pipeline(transaction=False)
        member = key.encode()
        pipe.execute_command("SET", self.prefix + member, value)
        pipe.execute_command("ZADD", self.index, 0, member)
        await pipe.execute()

    async def put_bare(self, key: str, value: bytes) -> None:
        """A plain SET, no index: what an unordered cache would do (shown for reference)."""
        await self.client.set(self.prefix + key.encode(), value)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.client.get(self.prefix + key.encode())
        return value

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        """MSET of the values and one ZADD of their index entries, in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        mset: list[bytes] = []
        zadd: list[bytes | int] = []
        for key, value in items:
            member = key.encode()
            mset += (self.prefix + member, value)
            zadd += (0, member)
        pipe.execute_command("MSET", *mset)
        pipe.execute_command("ZADD", self.index, *zadd)
        await pipe.execute()

    async def put_many_bare(self, items: list[tuple[str, bytes]]) -> None:
        """One MSET, no index (shown for reference)."""
        await self.client.mset({self.prefix + key.encode(): value for key, value in items})

    async def fill_index(self, items: list[tuple[str, bytes]]) -> None:
        """Setup only (not timed): the index the raw scan reads."""
        await self.put_many(items)

    async def scan(self, prefix: str) -> AsyncIterator[tuple[str, bytes]]:
        low = b"[" + prefix.encode()
        high = b"(" + prefix[:-1].encode() + chr(ord(prefix[-1]) + 1).encode()
        while True:
            members = await self.client.zrangebylex(self.index, low, high, 0, self.page)
            if not members:
                return
            values = await self.client.mget([self.prefix + member for member in members])
            for member, value in zip(members, values, strict=True):
                if value is not None:
                    yield member.decode(), value
            if len(members) < self.page:
                return
            low = b"(" + members[-1]

    async def drop(self) -> None:
        members = await self.client.zrange(self.index, 0, -1)
        for start in range(0, len(members), 1000):
            await self.client.delete(*[self.prefix + m for m in members[start:start + 1000]])
        await self.client.delete(self.index)
        puts = [key async for key in self.client.scan_iter(match=self.prefix + b"*", count=1000)]
        for start in range(0, len(puts), 1000):
            await self.client.delete(*puts[start:start + 1000])


async def run(ctx: BenchContext) -> None:
    for backend, url in URLS.items():
        if ctx.wanted(backend):
            await bench(ctx, backend, url)


async def bench(ctx: BenchContext, backend: str, url: str) -> None:
    namespace = "bench_" + uuid.uuid4().hex[:8]
    store = RedisStore(url, namespace=namespace)
    await store.open()
    plain_url = url.replace("+cluster", "", 1)
    client: Any = (RedisCluster.from_url(plain_url) if backend == "redis_cluster"
                   else Redis.from_url(plain_url))
    raw = RawRedis(client, namespace, store.scan_batch_size)
    try:
        await operations(ctx, backend, store, raw)
    finally:
        await raw.drop()
        await client.aclose()
        await drop_store(store)
        await store.close()


async def drop_store(store: RedisStore) -> None:
    keys = await store.keys()
    for start in range(0, len(keys), 1000):
        await store.delete_many(keys[start:start + 1000])


async def operations(ctx: BenchContext, backend: str, ours: RedisStore, raw: RawRedis) -> None:
    n = ctx.n(2000)
    # Keys shaped as the session layer's: 100 messages a session, so a batch of 100 is one
    # partition (kvsessions.kv.partitions), as a session's messages are.
    keys = [f"message:s{i // 100:05d}:{i:08d}" for i in range(n)]

    async def put_ours(i: int) -> None:
        await ours.put(keys[i], orjson.dumps(document(i)))

    async def put_raw(i: int) -> None:
        await raw.put(keys[i], orjson.dumps(document(i)))

    await row(ctx, "put", backend, n, lambda: repeat(n, put_ours), lambda: repeat(n, put_raw),
              GET_PUT_TARGET)

    async def put_bare(i: int) -> None:
        await raw.put_bare(keys[i], orjson.dumps(document(i)))

    await row(ctx, "put (raw: bare SET, no index)", backend, n,
              lambda: repeat(n, put_ours), lambda: repeat(n, put_bare), None)

    async def get_ours(i: int) -> None:
        orjson.loads(await ours.get(keys[i]) or b"")

    async def get_raw(i: int) -> None:
        orjson.loads(await raw.get(keys[i]) or b"")

    await row(ctx, "get", backend, n, lambda: repeat(n, get_ours), lambda: repeat(n, get_raw),
              GET_PUT_TARGET)
    await row(ctx, "16 concurrent gets", backend, n, lambda: concurrently(n, 16, get_ours),
              lambda: concurrently(n, 16, get_raw), GET_PUT_TARGET)

    batches = max(1, n // 100)

    async def many(target: Any) -> None:
        for b in range(batches):
            await target.put_many(
                [(keys[i], orjson.dumps(document(i))) for i in range(b * 100, b * 100 + 100)
                 if i < n])

    await row(ctx, "put_many(100)", backend, batches * 100, lambda: many(ours),
              lambda: many(raw), BATCH_TARGET)

    async def many_bare() -> None:
        for b in range(batches):
            await raw.put_many_bare(
                [(keys[i], orjson.dumps(document(i))) for i in range(b * 100, b * 100 + 100)
                 if i < n])

    await row(ctx, "put_many(100) (raw: bare MSET, no index)", backend, batches * 100,
              lambda: many(ours), many_bare, None)

    total = ctx.n(SCAN_DOCS)
    docs = [orjson.dumps(document(i)) for i in range(min(n, total))]
    for start in range(0, total, 1000):
        chunk = [(f"scan:s{i // 1000:03d}:{i:08d}", docs[i % len(docs)])
                 for i in range(start, min(total, start + 1000))]
        await ours.put_many(chunk)
        await raw.fill_index(chunk)

    def scan_ours() -> Awaitable[None]:
        return decode_scan(ours, "scan:", total)

    def scan_raw() -> Awaitable[None]:
        return decode_scan(raw, "scan:", total)

    await row(ctx, f"ordered scan of {total:,}", backend, total, scan_ours, scan_raw,
              BATCH_TARGET)


async def row(ctx: BenchContext, operation: str, backend: str, count: int,
              ours: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]],
              target: float | None) -> None:
    ours_rate, raw_rate = await ctx.paired(count, ours, raw)
    ctx.row("kv-redis", operation, backend, ours_rate, raw_rate, target=target)
