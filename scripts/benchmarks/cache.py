"""CachedStore: each tier beside the raw work it stands for, 2 KB documents, orjson decode of
every value read on both sides.

- local hit: ``await store.get`` served by the in-process tier, beside a bare cachetools
  ``TTLCache.get`` of the same bytes (target: at most 5 µs per hit, absolute);
- Redis hit (local tier off): one GET of the key's slot, beside a raw redis-py GET (target
  ratio 1.2);
- miss: a Redis GET, the inner store's get and the conditional fill (batched in the
  background), beside the inner store's get plus a raw SET awaited in line (target ratio 1.3).

Servers: Redis (KVSESSIONS_TEST_REDIS_URL) and, for the PostgreSQL miss row, PostgreSQL
(KVSESSIONS_TEST_POSTGRES_URL). Backends for ``--only``: cache_local, cache_redis,
cache_sqlite, cache_postgresql.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import orjson
from cachetools import TTLCache
from redis.asyncio import Redis

from benchmarks.harness import BenchContext, document
from kvsessions.kv.base import KVStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.registry import open_store
from kvsessions.wrappers.cache import CachedStore

REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "KVSESSIONS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LOCAL_HIT_TARGET_US = 5.0
REDIS_HIT_TARGET, MISS_TARGET = 1.2, 1.3
#: The raw client gets the per-call timeouts the tier gives its own client (redis_timeout):
#: both sides then bound every call the same way.
RAW_TIMEOUTS = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}
KEYS = 100


def _values(count: int = KEYS) -> list[tuple[str, bytes]]:
    return [(f"message:s1:{i:06d}", orjson.dumps(document(i))) for i in range(count)]


async def _forget(client: Redis, namespace: str) -> None:
    names = [name async for name in client.scan_iter(match=f"kvcache:{namespace}:*")]
    if names:
        await client.delete(*names)


async def local_hit(ctx: BenchContext) -> None:
    items = _values()
    keys = [key for key, _ in items]
    n = ctx.n(50_000)
    raw_cache: TTLCache[str, bytes] = TTLCache(maxsize=10_000, ttl=60.0)
    for key, value in items:
        raw_cache[key] = value
    async with CachedStore(MemoryStore(namespace="bench_cache_local"),
                           redis_url=REDIS_URL) as store:
        await store.put_many(items)
        for key in keys:
            assert await store.get(key) is not None

        async def ours() -> None:
            for i in range(n):
                orjson.loads(await store.get(keys[i % KEYS]))  # type: ignore[arg-type]

        async def raw() -> None:
            for i in range(n):
                orjson.loads(raw_cache.get(keys[i % KEYS]))  # type: ignore[arg-type]

        ours_rate, raw_rate = await ctx.paired(n, ours, raw)
        assert store.statistics()["local_hits"] >= n
        await _forget_store(store)
    micros = 1e6 / ours_rate
    verdict = "ok" if micros <= LOCAL_HIT_TARGET_US else "MISS"
    ctx.row("cache", "get, local-tier hit", "cache_local", ours_rate, raw_rate,
            note=f"raw = TTLCache.get + orjson.loads; {micros:.2f} µs/hit, "
                 f"target <= {LOCAL_HIT_TARGET_US} µs: {verdict}")


async def redis_hit(ctx: BenchContext) -> None:
    items = _values()
    keys = [key for key, _ in items]
    n = ctx.n(5_000)
    client = Redis.from_url(REDIS_URL, **RAW_TIMEOUTS)
    raw_prefix = f"bench:raw:{uuid.uuid4().hex[:8]}:".encode()
    try:
        await client.mset({raw_prefix + key.encode(): value for key, value in items})
        async with CachedStore(MemoryStore(namespace="bench_cache_redis"), redis_url=REDIS_URL,
                               local_maxsize=0) as store:
            await store.put_many(items)
            for key in keys:  # fill the Redis tier
                await store.get(key)
            await store.drain()

            async def ours() -> None:
                for i in range(n):
                    orjson.loads(await store.get(keys[i % KEYS]))  # type: ignore[arg-type]

            async def raw() -> None:
                for i in range(n):
                    orjson.loads(await client.get(raw_prefix + keys[i % KEYS].encode()))

            ours_rate, raw_rate = await ctx.paired(n, ours, raw)
            assert store.statistics()["redis_hits"] >= n
            await _forget_store(store)
        ctx.row("cache", "get, Redis-tier hit", "cache_redis", ours_rate, raw_rate,
                target=REDIS_HIT_TARGET, note="raw = redis-py GET + orjson.loads")
    finally:
        await client.delete(*[raw_prefix + key.encode() for key in keys])
        await client.aclose()


async def miss(ctx: BenchContext, backend: str, inner: KVStore) -> None:
    n = ctx.n(2_000)
    items = _values(n)
    keys = [key for key, _ in items]
    client = Redis.from_url(REDIS_URL, **RAW_TIMEOUTS)
    raw_prefix = f"bench:raw:{uuid.uuid4().hex[:8]}:".encode()
    store = CachedStore(inner, redis_url=REDIS_URL)
    try:
        async with store:
            await inner.put_many(items)

            async def setup() -> None:
                await store.drain()
                store._local.clear()
                await _forget(client, store.namespace)

            async def ours() -> None:
                for i in range(n):
                    orjson.loads(await store.get(keys[i]))  # type: ignore[arg-type]
                await store.drain()

            async def raw() -> None:
                for i in range(n):
                    value = await inner.get(keys[i])
                    await client.set(raw_prefix + keys[i].encode(), value)  # type: ignore[arg-type]
                    orjson.loads(value)  # type: ignore[arg-type]

            ours_rate, raw_rate = await ctx.paired(n, ours, raw, setup=setup)
            await inner.delete_many(keys)
            await _forget_store(store)
        ctx.row("cache", "get, miss (fills both tiers)", backend, ours_rate, raw_rate,
                target=MISS_TARGET, note="raw = inner get + redis-py SET + orjson.loads")
    finally:
        await client.delete(*[raw_prefix + key.encode() for key in keys])
        await client.aclose()


async def _forget_store(store: CachedStore) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        await _forget(client, store.namespace)
    finally:
        await client.aclose()


async def run(ctx: BenchContext) -> None:
    if ctx.wanted("cache_local"):
        await local_hit(ctx)
    if ctx.wanted("cache_redis"):
        await redis_hit(ctx)
    if ctx.wanted("cache_sqlite"):
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{Path(folder) / 'bench.db'}?namespace=bench_cache_miss"
            await miss(ctx, "cache_sqlite", open_store(url))
    if ctx.wanted("cache_postgresql"):
        separator = "&" if "?" in POSTGRES_URL else "?"
        await miss(ctx, "cache_postgresql",
                   open_store(f"{POSTGRES_URL}{separator}namespace=bench_cache_miss"))
