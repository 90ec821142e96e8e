"""Contention (issue 7, point 4).

SQLite: 8 processes open one *fresh* file at the same moment and each writes 500 documents
(and creates a table of its own half way, a schema change under everybody's feet): 0 "database
is locked" errors may reach a caller. (tests/test_sqlite_store.py has a small version of this;
this one is full size, counts every error and prints the counts.)

Pools: 500 concurrent operations on a pool of 5 complete by waiting, never holding more than 5
connections. With an acquire timeout set, a call that finds the pool busy gets a typed error
(``StoreUnavailableError``) within the timeout plus 10 %, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as redis_asyncio
from pymongo import monitoring

from kvsessions.errors import StoreUnavailableError
from kvsessions.kv.mongodb import MongoDBStore
from kvsessions.kv.postgresql import PostgreSQLStore
from kvsessions.kv.redis import RedisStore
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.mongo_server import drop_collections, mongodb_url
from tests.reliability.private_servers import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 8
DOCUMENTS = 500
POOL = 5
CONCURRENT = 500

# ------------------------------------------------------------------ SQLite, 8 processes

#: One writer process: imports, says "ready", waits for "go" on stdin (so all 8 open the
#: fresh file within the same few milliseconds), writes, and prints its counts as JSON.
WRITER = r"""
import asyncio, json, sys
from kvsessions.kv.sqlite import SQLiteStore

path, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {"worker": worker, "ok": 0, "locked": 0, "other": []}


def failed(what, exc):
    text = f"{what}: {type(exc).__name__}: {exc}"
    if "locked" in text.lower() or "busy" in text.lower():
        counts["locked"] += 1
    counts["other"].append(text[:300])


async def attempt(what, call):
    try:
        result = await call
    except Exception as exc:
        failed(what, exc)
        return None
    counts["ok"] += 1
    return result


def doc(i):
    return json.dumps({"kind": "message", "v": 1, "worker": worker, "i": i}).encode()


async def main():
    store = SQLiteStore(path, namespace="contended")
    await attempt("open", store.open())
    own = None
    for i in range(count):
        key = f"w{worker}:{i:05d}"
        if i % 10 == 0:
            await attempt("put_if_absent", store.put_if_absent(key, doc(i)))
        elif i % 10 == 5:
            await attempt("put_many", store.put_many([(key, doc(i))]))
        else:
            await attempt("put", store.put(key, doc(i)))
        if i % 4 == 0:
            await attempt("get", store.get(key))
        if i == count // 2:  # a new table in the same file while the others write
            own = SQLiteStore(path, namespace=f"own{worker}")
            await attempt("open own", own.open())
            await attempt("put own", own.put("k", doc(i)))
    await attempt("race", store.put_if_absent("race", doc(-1)))
    await attempt("close", store.close())
    if own is not None:
        await attempt("close own", own.close())


print("ready", flush=True)
sys.stdin.readline()
asyncio.run(main())
print(json.dumps(counts), flush=True)
"""


def test_eight_processes_write_500_documents_each_to_one_fresh_file(tmp_path: Path,
                                                                     soak: int) -> None:
    path = tmp_path / "fresh.sqlite"
    count = DOCUMENTS * soak
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children: list[subprocess.Popen[str]] = []
    try:
        for worker in range(PROCESSES):
            children.append(subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path), str(worker), str(count)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env, cwd=tmp_path))
        for child in children:  # every child has imported everything: now they start together
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
        assert not path.exists()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results: list[dict[str, Any]] = []
        for child in children:
            stdout, stderr = child.communicate(timeout=240)
            assert child.returncode == 0, stderr[-3000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)

    locked = sum(r["locked"] for r in results)
    other = [text for r in results for text in r["other"]]
    calls = sum(r["ok"] for r in results)
    print(f"\nSQLite, {PROCESSES} processes x {count} documents, fresh file: "
          f"calls ok={calls} 'database is locked'={locked} other errors={len(other)}")
    assert locked == 0, other[:5]
    assert other == []

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT key, value FROM contended").fetchall()
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")}
    assert tables == {"contended", "kvsessions-layouts", *(f"own{w}" for w in range(PROCESSES))}
    stored = dict(rows)
    assert len(stored) == PROCESSES * count + 1  # + the one "race" winner
    for worker in range(PROCESSES):
        for i in range(count):
            assert orjson.loads(stored[f"w{worker}:{i:05d}"]) == {
                "kind": "message", "v": 1, "worker": worker, "i": i}


# ------------------------------------------------------------------ pool back-pressure


def value(n: int) -> bytes:
    return orjson.dumps({"kind": "message", "v": 1, "n": n})


async def operation(store: Any, n: int) -> None:
    """One of 500: a write, then a read of it."""
    await store.put(f"k{n % 50:02d}", value(n))
    assert await store.get(f"k{n % 50:02d}") is not None


async def sample_while(done: asyncio.Event, sample: Any, every: float = 0.005) -> int:
    """The largest value ``sample()`` returned until ``done`` is set."""
    largest = 0
    while not done.is_set():
        largest = max(largest, await sample())
        await asyncio.sleep(every)
    return largest


async def run_concurrently(store: Any, sample: Any) -> int:
    """500 operations at once; the most connections ``sample`` saw in use meanwhile."""
    done = asyncio.Event()
    sampler = asyncio.create_task(sample_while(done, sample))
    try:
        await asyncio.wait_for(
            asyncio.gather(*(operation(store, n) for n in range(CONCURRENT))), 120)
    finally:
        done.set()
    return await sampler


async def test_postgresql_pool_of_5_takes_500_concurrent_operations() -> None:
    namespace = f"bp_{uuid.uuid4().hex[:12]}"
    application = f"kvs_{namespace}"
    monitor = await asyncpg.connect(POSTGRES_URL, timeout=10)

    async def ours() -> int:
        count: int = await monitor.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application)
        return count

    store = PostgreSQLStore(f"{POSTGRES_URL}?application_name={application}",
                            namespace=namespace, max_pool_size=POOL)
    try:
        async with store:
            most = await run_concurrently(store, ours)
            assert await ours() <= POOL
        print(f"\nPostgreSQL max_pool_size={POOL}: {CONCURRENT} operations done, "
              f"at most {most} connections seen")
        assert 1 <= most <= POOL
    finally:
        await monitor.close()
        await drop_tables(POSTGRES_URL, {namespace})


async def test_postgresql_acquire_timeout_raises_a_typed_error_in_time() -> None:
    """5 calls wait on a table lock held elsewhere, so the pool of 5 is all in use; the 6th
    call must give up after ``acquire_timeout`` (+10 %) with StoreUnavailableError."""
    namespace = f"bp_{uuid.uuid4().hex[:12]}"
    application = f"kvs_{namespace}"
    timeout = 1.0
    store = PostgreSQLStore(f"{POSTGRES_URL}?application_name={application}",
                            namespace=namespace, max_pool_size=POOL, acquire_timeout=timeout)
    locker = await asyncpg.connect(POSTGRES_URL, timeout=10)
    # pg_stat_activity is a snapshot per transaction: watch it from outside the locker's
    monitor = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        async with store:
            await store.put("k", value(0))
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute(f'LOCK TABLE "{namespace}" IN ACCESS EXCLUSIVE MODE')
            blocked = [asyncio.create_task(store.get("k")) for _ in range(POOL)]
            deadline = time.monotonic() + 30
            while await monitor.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                    "AND wait_event_type = 'Lock'", application) < POOL:
                assert time.monotonic() < deadline, "the 5 calls never blocked"
                await asyncio.sleep(0.02)
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="acquire_timeout"):
                await store.get("k")
            elapsed = time.monotonic() - started
            await transaction.rollback()
            results = await asyncio.wait_for(asyncio.gather(*blocked), 30)
            # the waiting calls complete once unlocked, and the store goes on
            assert [orjson.loads(r or b"") for r in results] == [{"kind": "message", "v": 1,
                                                                   "n": 0}] * POOL
            assert await store.get("k") is not None
        print(f"\nPostgreSQL acquire_timeout={timeout}: typed error after {elapsed:.3f} s")
        assert timeout <= elapsed <= timeout * 1.1
    finally:
        await locker.close()
        await monitor.close()
        await drop_tables(POSTGRES_URL, {namespace})


async def test_redis_acquire_timeout_raises_a_typed_error_in_time() -> None:
    """Both connection slots are held by blocking list pops; the next call must give up after
    ``acquire_timeout`` (+10 %) with StoreUnavailableError, and work again once they return."""
    url = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bp_{uuid.uuid4().hex[:12]}"
    blocker = f"kvs-test-blocker-{namespace}"
    timeout = 1.0
    store = RedisStore(url, namespace=namespace, max_connections=2, acquire_timeout=timeout)
    helper = redis_asyncio.Redis.from_url(url)
    try:
        async with store:
            await store.put("k", value(0))
            # Two calls that hold a slot until the list gets items (the store's own command
            # path, so the slots are taken exactly as a slow server would take them).
            held = [asyncio.create_task(store._command("BLPOP", blocker, 10)) for _ in range(2)]
            await asyncio.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="acquire_timeout"):
                await store.get("k")
            elapsed = time.monotonic() - started
            await helper.rpush(blocker, "a", "b")
            await asyncio.wait_for(asyncio.gather(*held), 10)
            assert orjson.loads(await store.get("k") or b"") == orjson.loads(value(0))
            await store.delete("k")
        print(f"\nRedis acquire_timeout={timeout}: typed error after {elapsed:.3f} s")
        assert timeout <= elapsed <= timeout * 1.1
    finally:
        await helper.delete(blocker)
        await helper.aclose()


async def test_redis_pool_of_5_takes_500_concurrent_operations() -> None:
    """On a private server, so that its client count is ours alone."""
    with PrivateRedis() as server:
        monitor = redis_asyncio.Redis.from_url(server.url, decode_responses=True)

        async def ours() -> int:
            clients = (await monitor.info("clients"))["connected_clients"]
            return int(clients) - 1  # not the monitor itself

        store = RedisStore(f"{server.url}?namespace=bp&max_connections={POOL}")
        try:
            async with store:
                most = await run_concurrently(store, ours)
                pool = store._client.connection_pool
                held = len(pool._available_connections) + len(pool._in_use_connections)
        finally:
            await monitor.aclose()
    print(f"\nRedis max_connections={POOL}: {CONCURRENT} operations done, "
          f"at most {most} connections seen, {held} in the pool")
    assert 1 <= most <= POOL and held <= POOL


class _PoolSize(monitoring.ConnectionPoolListener):
    """Counts the pool's open connections from PyMongo's connection events."""

    def __init__(self) -> None:
        self.open = 0
        self.most = 0

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        self.open += 1
        self.most = max(self.most, self.open)

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        self.open -= 1

    def pool_created(self, event: Any) -> None: ...
    def pool_ready(self, event: Any) -> None: ...
    def pool_cleared(self, event: Any) -> None: ...
    def pool_closed(self, event: Any) -> None: ...
    def connection_ready(self, event: Any) -> None: ...
    def connection_check_out_started(self, event: Any) -> None: ...
    def connection_check_out_failed(self, event: Any) -> None: ...
    def connection_checked_out(self, event: Any) -> None: ...
    def connection_checked_in(self, event: Any) -> None: ...


async def test_mongodb_pool_of_5_through_the_url_takes_500_concurrent_operations() -> None:
    namespace = f"bp_{uuid.uuid4().hex[:12]}"
    listener = _PoolSize()
    store = MongoDBStore(f"{mongodb_url()}?maxPoolSize={POOL}", namespace=namespace,
                         client_options={"event_listeners": [listener]})

    async def ours() -> int:
        return listener.open

    try:
        async with store:
            most = await run_concurrently(store, ours)
    finally:
        drop_collections([namespace])
    print(f"\nMongoDB maxPoolSize={POOL} (URL): {CONCURRENT} operations done, "
          f"at most {listener.most} connections opened")
    assert 1 <= listener.most <= POOL and most <= POOL
