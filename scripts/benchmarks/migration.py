"""Migration (``migrate_storage``) beside the raw limit of the same pair of stores.

For each pair (sqlite->postgresql, postgresql->mongodb, sqlite->redis) and each repeat, in
this order: the raw driver's ordered scan of the same documents in a raw source table, the raw
driver's batch write (1,000 a batch) of the same documents into an empty raw destination, and
our migration of the documents into an empty destination namespace (``verify=False``,
``validate=False``: the copy itself; ``batch_size=1000``). The raw side reuses the raw classes
of the kv_* sections, so its figures are the ones those sections stand beside:
aiosqlite pages, asyncpg ``unnest`` into jsonb, PyMongo ``bulk_write``, redis-py ``MSET`` plus
one ``ZADD`` of the ordered index. A migration cannot beat the slower of the two raw halves,
so the row's raw figure is min(raw scan rate, raw write rate) and the target is at least 0.8
of it (ratio = our time / raw time <= 1.25).

For sqlite->postgresql and sqlite->redis a second row sets ``workers=4`` beside ``workers=1``
(the default: one stream, one or two writes in flight as measured), interleaved run by run
into fresh destinations: the ratio is the 4-worker time over the 1-worker time, target at most
1/1.6 (at least 1.6x the one-worker throughput). The note gives, per document, the CPU time
of this process (one core at most) and of the destination server (Redis: its own ``INFO cpu``;
PostgreSQL: every ``postgres`` process of this machine, other users' included), and the load
average: which of them limits the copy, and whether the machine has a core to give more
streams.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import orjson
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from benchmarks.harness import BenchContext, document
from benchmarks.kv_embedded import CREATE as SQLITE_CREATE
from benchmarks.kv_embedded import RawSQLite
from benchmarks.kv_mongodb import RawMongo
from benchmarks.kv_postgresql import URL as POSTGRES_URL
from benchmarks.kv_postgresql import RawPostgres
from benchmarks.kv_redis import URLS as REDIS_URLS
from benchmarks.kv_redis import RawRedis, drop_store
from kvsessions.kv.base import KVStore
from kvsessions.kv.mongodb import MongoDBStore
from kvsessions.kv.postgresql import PostgreSQLStore
from kvsessions.kv.redis import RedisStore
from kvsessions.kv.sqlite import SQLiteStore
from kvsessions.migration.copy import migrate_storage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.mongo_server import SecantusServer

DOCUMENTS = 100_000
BATCH = 1000
TARGET = 1.25  # our time / raw-limit time: at least 0.8 of the raw limit
PAIRS = [("sqlite", "postgresql"), ("postgresql", "mongodb"), ("sqlite", "redis")]
#: Pairs that also get the workers row, and its target (4-worker time / 1-worker time).
WORKER_PAIRS = {("sqlite", "postgresql"), ("sqlite", "redis")}
WORKERS = 4
WORKERS_TARGET = round(1 / 1.6, 3)
PREFIX = "message:"
_DISTINCT = 1000
_VALUES = [orjson.dumps(document(i)) for i in range(_DISTINCT)]


def items(start: int, stop: int) -> list[tuple[str, bytes]]:
    """Documents ``start..stop`` (2 KB each, keys in scan order)."""
    return [(f"{PREFIX}s1:{i:08d}", _VALUES[i % _DISTINCT]) for i in range(start, stop)]


@dataclass
class Backend:
    """How the bench gets our store and the raw driver's equivalent for one kind of store."""

    name: str
    ours: Callable[[str], KVStore]
    #: A raw table/collection/key set: (scan(prefix), put_many(items), drop()).
    raw: Callable[[str], Awaitable[Any]]
    drop_ours: Callable[[KVStore], Awaitable[None]]
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def run(ctx: BenchContext) -> None:
    pairs = [(s, d) for s, d in PAIRS if not ctx.only or s in ctx.only or d in ctx.only]
    if not pairs:
        return
    folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-migration-"))
    try:
        async with AsyncExitStack() as stack:
            backends: dict[str, Backend] = {}
            for source, destination in pairs:
                for name in (source, destination):
                    if name not in backends:
                        backends[name] = await make_backend(name, folder, stack)
                await bench_pair(ctx, backends[source], backends[destination])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def make_backend(name: str, folder: Path, stack: AsyncExitStack) -> Backend:
    page = KVStore.scan_batch_size
    if name == "sqlite":
        async def raw_sqlite(label: str) -> Any:
            conn = await aiosqlite.connect(folder / f"raw_{label}.db", isolation_level=None,
                                           timeout=30)
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute(SQLITE_CREATE)
            raw = RawSQLite(conn, page)
            raw.drop = conn.close  # type: ignore[attr-defined]
            return raw

        async def drop_sqlite(store: KVStore) -> None:
            await store.close()

        return Backend(name, lambda ns: SQLiteStore(folder / "ours.db", namespace=ns),
                       raw_sqlite, drop_sqlite)
    if name == "postgresql":
        connection = await asyncpg.connect(POSTGRES_URL)
        stack.push_async_callback(connection.close)

        async def raw_postgres(label: str) -> Any:
            raw = RawPostgres(connection, None, f"bench_raw_{label}", page)
            await raw.create()
            return raw

        async def drop_postgres(store: KVStore) -> None:
            await store.close()
            await connection.execute(f'DROP TABLE IF EXISTS "{store.namespace}"')

        return Backend(name, lambda ns: PostgreSQLStore(POSTGRES_URL, namespace=ns),
                       raw_postgres, drop_postgres)
    if name == "mongodb":
        server = stack.enter_context(SecantusServer(cache_size="1G"))
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.url)
        stack.push_async_callback(client.close)
        database = client.get_default_database("kvsessions_test")

        async def raw_mongo(label: str) -> Any:
            collection = f"bench_raw_{label}"
            raw = RawMongo(database[collection], page)

            async def drop() -> None:
                await database.drop_collection(collection)

            raw.drop = drop  # type: ignore[attr-defined]
            return raw

        async def drop_mongo(store: KVStore) -> None:
            await store.close()
            await database.drop_collection(store.namespace)

        return Backend(name, lambda ns: MongoDBStore(server.url, namespace=ns),
                       raw_mongo, drop_mongo)
    if name == "redis":
        url = REDIS_URLS["redis"]
        redis_client: Any = Redis.from_url(url)
        stack.push_async_callback(redis_client.aclose)

        async def raw_redis(label: str) -> Any:
            return RawRedisOrdered(redis_client, f"bench_raw_{label}", page)

        async def drop_redis(store: KVStore) -> None:
            await drop_store(store)  # type: ignore[arg-type]
            await store.close()

        return Backend(name, lambda ns: RedisStore(url, namespace=ns), raw_redis, drop_redis)
    raise ValueError(f"no migration bench for {name!r}")


class RawRedisOrdered(RawRedis):
    """A raw batch write that keeps the ordered index a scan needs: MSET of the values and
    one ZADD of their keys, pipelined in one round trip."""

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.mset({self.prefix + key.encode(): value for key, value in items})
        pipe.zadd(self.index, {key.encode(): 0 for key, _ in items})
        await pipe.execute()


async def fill(target: Any, n: int) -> None:
    for start in range(0, n, BATCH):
        await target.put_many(items(start, min(n, start + BATCH)))


async def consume(rows: AsyncIterator[Any]) -> int:
    count = 0
    async for _ in rows:
        count += 1
    return count


async def bench_pair(ctx: BenchContext, source: Backend, destination: Backend) -> None:
    n = ctx.n(DOCUMENTS)
    label = uuid.uuid4().hex[:8]
    ours_source = await source.ours(f"bench_src_{label}").open()
    raw_source = await source.raw(f"src_{label}")
    try:
        await fill(ours_source, n)
        await fill(raw_source, n)
        scan_rates, write_rates, ours_rates = [], [], []
        for repeat in range(ctx.repeats):
            start = time.perf_counter()
            scanned = await consume(raw_source.scan(PREFIX))
            scan_rates.append(n / (time.perf_counter() - start))
            assert scanned == n, scanned

            raw_destination = await destination.raw(f"dst_{label}_{repeat}")
            try:
                start = time.perf_counter()
                await fill(raw_destination, n)
                write_rates.append(n / (time.perf_counter() - start))
            finally:
                await raw_destination.drop()

            ours_destination = await destination.ours(f"bench_dst_{label}_{repeat}").open()
            try:
                start = time.perf_counter()
                result = await migrate_storage(ours_source, ours_destination, verify=False,
                                               validate=False, batch_size=BATCH)
                ours_rates.append(n / (time.perf_counter() - start))
                assert result["documents_copied"] == n, result
            finally:
                await destination.drop_ours(ours_destination)
        scan, write, ours = (statistics.median(r) for r in (scan_rates, write_rates,
                                                              ours_rates))
        limit = min(scan, write)
        ctx.row("migration", f"migrate {n:,} x 2 KB", f"{source.name}->{destination.name}",
                ours, limit, target=TARGET,
                note=f"raw scan {scan:,.0f}/s, raw write {write:,.0f}/s; "
                     f"{ours / limit:.2f} of the raw limit")
        if (source.name, destination.name) in WORKER_PAIRS:
            await bench_workers(ctx, ours_source, destination, n, label)
    finally:
        await raw_source.drop()
        await source.drop_ours(ours_source)


def _postgres_cpu() -> float:
    """CPU seconds used so far by every ``postgres`` process of this machine."""
    total = 0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)
            if not fields[0].endswith("(postgres"):
                continue
            values = fields[1].split()
            total += int(values[11]) + int(values[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


async def _server_cpu(destination: Backend) -> float:
    if destination.name == "redis":
        client: Any = Redis.from_url(REDIS_URLS["redis"])
        try:
            info = await client.info("cpu")
        finally:
            await client.aclose()
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return _postgres_cpu()


async def bench_workers(ctx: BenchContext, source: KVStore, destination: Backend, n: int,
                        label: str) -> None:
    """``workers=WORKERS`` beside ``workers=1``, interleaved, each into a fresh namespace."""
    rates: dict[int, list[float]] = {1: [], WORKERS: []}
    cpu: dict[int, list[float]] = {1: [], WORKERS: []}
    server: dict[int, list[float]] = {1: [], WORKERS: []}
    streams: list[int] = []
    for repeat in range(ctx.repeats):
        for workers in (1, WORKERS):
            target = await destination.ours(f"bench_dst_{label}_w{workers}_{repeat}").open()
            try:
                server_start = await _server_cpu(destination)
                start, cpu_start = time.perf_counter(), time.process_time()
                result = await migrate_storage(source, target, verify=False, validate=False,
                                               batch_size=BATCH, workers=workers)
                cpu[workers].append((time.process_time() - cpu_start) / n * 1e6)
                rates[workers].append(n / (time.perf_counter() - start))
                server[workers].append((await _server_cpu(destination) - server_start) / n
                                       * 1e6)
                assert result["documents_copied"] == n, result
                if workers > 1:
                    streams.append(result["streams"])
            finally:
                await destination.drop_ours(target)
    one, many = (statistics.median(rates[w]) for w in (1, WORKERS))
    cpu_one, cpu_many = (statistics.median(cpu[w]) for w in (1, WORKERS))
    server_one, server_many = (statistics.median(server[w]) for w in (1, WORKERS))
    ctx.row("migration", f"migrate {n:,} x 2 KB, {WORKERS} workers vs 1",
            f"sqlite->{destination.name}", many, one, target=WORKERS_TARGET,
            note=f"{many / one:.2f}x one worker ({one:,.0f}/s); CPU µs/doc with 1 / "
                 f"{WORKERS}: this process {cpu_one:.0f} / {cpu_many:.0f}, "
                 f"{destination.name} server {server_one:.0f} / {server_many:.0f} "
                 f"(cores busy: {server_one * one / 1e6:.2f} / {server_many * many / 1e6:.2f}); "
                 f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
                 f"streams {max(streams)}")
