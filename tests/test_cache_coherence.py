"""CachedStore coherence on real Redis: two processes, invalidation timing, the read-fill/write
race with a fixed interleaving, and Redis stopped, paused and restarted under load.

The outage tests start their own redis-server on a free loopback port; the shared server on
6379 is never stopped. Run this file as a script (``child`` mode) to get the second process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.kv.base import KVStore, outlive_cancellation
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.registry import open_store
from kvsessions.wrappers.base import StoreWrapper
from kvsessions.wrappers.cache import CachedStore
from tests.net import free_port

REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent


def doc(n: int) -> bytes:
    return orjson.dumps({"n": n})


USED_NAMESPACES: list[str] = []


def namespace() -> str:
    name = "coh_" + uuid.uuid4().hex[:12]
    USED_NAMESPACES.append(name)
    return name


@pytest.fixture(autouse=True)
async def forget_used_namespaces() -> AsyncIterator[None]:
    """Leave no cache keys behind in the shared Redis."""
    yield
    from tests.backends.cached import forget_cache

    await forget_cache(USED_NAMESPACES)
    USED_NAMESPACES.clear()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> float:
    """Wait until ``check()`` is true; the seconds it took. ``timeout`` only keeps a broken
    build from hanging: it is a liveness bound, not a speed assertion."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"{what}: still not true after {timeout} s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


class GatedStore(StoreWrapper):
    """Reads the inner store, then waits at a gate before returning: a reader held between
    its inner read and its fill, so that a write can be slipped in there."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()
        self.read_done = asyncio.Event()

    async def _get(self, key: str) -> bytes | None:
        value = await self.inner._get(key)
        self.read_done.set()
        await self.gate.wait()
        return value

    async def _close(self) -> None:
        pass  # the shared inner store belongs to the test


async def raw_redis_get(name: str, redis_url: str = REDIS_URL) -> bytes | None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        value: bytes | None = await client.get(name)
        return value
    finally:
        await client.aclose()


async def cached_in_redis(store: CachedStore, key: str,
                          redis_url: str = REDIS_URL) -> bytes | None:
    """The document the Redis tier holds for ``key`` (None for an empty slot or a tombstone),
    read behind the cache's back."""
    raw = await raw_redis_get(f"{store.key_prefix}v:{key}", redis_url)
    if raw is None or not raw.startswith(b"E"):
        return None
    return raw.partition(b"|")[2]


# ---------------------------------------------------------------------- two stores, one Redis


async def test_read_fill_write_race_never_puts_an_older_value_back() -> None:
    """Reader misses, reads v1, stalls; a writer stores v2 and returns; the reader's late
    fill must be refused in Redis and locally."""
    ns = namespace()
    shared = MemoryStore(namespace=ns)
    gated = GatedStore(shared)
    reader = CachedStore(gated, redis_url=REDIS_URL, close_inner=False)
    writer = CachedStore(shared, redis_url=REDIS_URL, close_inner=False)
    async with reader, writer:
        await shared.put("k", doc(1))
        gated.gate.clear()
        read = asyncio.create_task(reader.get("k"))
        await gated.read_done.wait()           # the reader holds v1 and its snapshot
        await writer.put("k", doc(2))          # the write lands and invalidates
        await eventually(lambda: reader.statistics()["invalidations_received"] >= 1,
                         "the reader hears of the write")
        gated.gate.set()
        assert await read == doc(1)            # it started before the write: v1 is fine
        await reader.drain()
        stats = reader.statistics()
        assert stats["redis_fills"] == 0 and stats["redis_fills_refused"] == 1
        assert await cached_in_redis(reader, "k") is None
        assert await reader.get("k") == doc(2)  # not v1 from its own local tier
        async with CachedStore(shared, redis_url=REDIS_URL, close_inner=False) as third:
            assert await third.get("k") == doc(2)


async def test_late_fill_without_the_message_is_refused_by_the_tombstone() -> None:
    """Same race, but the reader's fill reaches Redis before the invalidation reaches the
    reader: only the tombstone check stands between v1 and the Redis tier."""
    ns = namespace()
    shared = MemoryStore(namespace=ns)
    gated = GatedStore(shared)
    reader = CachedStore(gated, redis_url=REDIS_URL, close_inner=False, local_maxsize=0)
    writer = CachedStore(shared, redis_url=REDIS_URL, close_inner=False)
    async with reader, writer:
        await shared.put("k", doc(1))
        gated.gate.clear()
        read = asyncio.create_task(reader.get("k"))
        await gated.read_done.wait()
        await writer.put("k", doc(2))
        gated.gate.set()
        await read
        await reader.drain()
        assert reader.statistics()["redis_fills_refused"] == 1
        assert await writer.get("k") == doc(2)
        assert await reader.get("k") == doc(2)
        await reader.drain()
        assert reader.statistics()["redis_fills"] == 1  # the fresh read did fill
        assert await cached_in_redis(reader, "k") == doc(2)


async def test_fill_before_the_write_is_invalidated_everywhere() -> None:
    ns = namespace()
    shared = MemoryStore(namespace=ns)
    a = CachedStore(shared, redis_url=REDIS_URL, close_inner=False)
    b = CachedStore(shared, redis_url=REDIS_URL, close_inner=False)
    async with a, b:
        def heard(count: int) -> Callable[[], bool]:
            return lambda: b.statistics()["invalidations_received"] >= count

        await a.put("k", doc(1))
        await eventually(heard(1), "invalidation")
        assert await b.get("k") == doc(1)           # miss: fills Redis
        await b.drain()
        assert await b.get("k") == doc(1)           # Redis hit: fills the local tier
        assert await b.get("k") == doc(1)
        assert (b.statistics()["redis_hits"], b.statistics()["local_hits"]) == (1, 1)
        await a.put("k", doc(2))
        await eventually(heard(2), "invalidation")
        assert await b.get("k") == doc(2)
        await a.delete("k")
        await eventually(heard(3), "invalidation")
        assert await b.get("k") is None
        await a.put_many([("x", doc(3)), ("y", doc(4))])
        assert await b.get_many(["x", "y"]) == [doc(3), doc(4)]
        await a.delete_many(["x"])
        await eventually(heard(5), "invalidation")
        assert await b.get_many(["x", "y"]) == [None, doc(4)]


async def test_in_one_process_a_read_sees_the_last_write() -> None:
    ns = namespace()
    async with CachedStore(MemoryStore(namespace=ns), redis_url=REDIS_URL) as store:
        for n in range(50):
            await store.put("k", doc(n))
            assert await store.get("k") == doc(n)
            assert (await store.get_many(["k"]))[0] == doc(n)
        await store.delete("k")
        assert await store.get("k") is None


class StallAfterCommit(StoreWrapper):
    """A write that lands in the inner store, then stalls before returning: its cache has
    not invalidated anything yet."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.committed = asyncio.Event()

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        await self.inner._put(key, value, ttl)
        self.committed.set()
        await self.gate.wait()

    async def _close(self) -> None:
        pass  # the shared inner store belongs to the test


def script_holding_client() -> tuple[Any, asyncio.Event]:
    """A Redis client whose script calls (a reader's fills) wait until the event is set."""
    import redis.asyncio as aioredis

    release = asyncio.Event()

    class HeldScripts(aioredis.Redis):
        async def execute_command(self, *args: Any, **options: Any) -> Any:
            if str(args[0]).upper() == "EVALSHA":
                await release.wait()
            return await super().execute_command(*args, **options)

    return HeldScripts.from_url(REDIS_URL), release


async def test_two_fills_of_one_key_never_bring_back_the_older_value() -> None:
    """Issue 11 item 7. A reader misses and reads v1 (its fill is held); a writer stores v2 and
    stalls before its invalidation; a second read misses too and returns v2. Both fills then
    arrive, the older first: the reader must never return v1 again."""
    ns = namespace()
    shared = MemoryStore(namespace=ns)
    stalling = StallAfterCommit(shared)
    client, release = script_holding_client()
    reader = CachedStore(shared, redis=client, close_inner=False)
    writer = CachedStore(stalling, redis_url=REDIS_URL, close_inner=False)
    older_seen = 0
    try:
        async with reader, writer:
            for n in range(20):
                key = f"k{n}"
                many = n % 2 == 1

                async def read(key: str = key, many: bool = many) -> bytes | None:
                    return (await reader.get_many([key]))[0] if many else await reader.get(key)

                await shared.put(key, doc(1))
                release.clear()
                assert await read() == doc(1)           # a miss: its fill waits
                stalling.gate.clear()
                stalling.committed.clear()
                write = asyncio.create_task(writer.put(key, doc(2)))
                await stalling.committed.wait()         # v2 stored, nothing invalidated yet
                assert await read() == doc(2)           # a miss that reads v2
                release.set()
                await reader.drain()                    # the fill of v1 arrives first
                older_seen += await read() != doc(2)
                stalling.gate.set()
                await write
                assert await read() == doc(2)
    finally:
        await client.aclose()
    assert older_seen == 0, f"v1 came back after v2 in {older_seen} of 20 rounds"


class SlowWriteStore(StoreWrapper):
    """Writes wait at a gate and, like every real adapter, outlive a cancelled caller."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        async def gated_put() -> None:
            self.writing.set()
            await self.gate.wait()
            await self.inner._put(key, value, ttl)

        await outlive_cancellation(gated_put())

    async def _delete(self, key: str) -> bool:
        async def gated_delete() -> bool:
            self.writing.set()
            await self.gate.wait()
            return await self.inner._delete(key)

        return await outlive_cancellation(gated_delete())

    async def _close(self) -> None:
        pass  # the shared inner store belongs to the test


@pytest.mark.parametrize("operation", ["put", "delete"])
async def test_a_cancelled_write_still_invalidates_the_cached_value(operation: str) -> None:
    """The inner write outlives its cancelled caller, so the invalidation must too: else the
    other processes (and Redis) keep serving the value it replaced."""
    ns = namespace()
    shared = MemoryStore(namespace=ns)
    slow = SlowWriteStore(shared)
    writer = CachedStore(slow, redis_url=REDIS_URL, close_inner=False)
    reader = CachedStore(shared, redis_url=REDIS_URL, close_inner=False)
    async with writer, reader:
        await shared.put("k", doc(1))
        assert await reader.get("k") == doc(1)  # a miss: cached in Redis after drain()
        await reader.drain()
        assert await cached_in_redis(reader, "k") is not None
        write = (writer.put("k", doc(2)) if operation == "put" else writer.delete("k"))
        task = asyncio.create_task(write)
        await slow.writing.wait()
        task.cancel()
        await asyncio.sleep(0.01)
        slow.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        expected = doc(2) if operation == "put" else None
        assert await shared.get("k") == expected  # the write did land
        assert await cached_in_redis(reader, "k") is None
        await eventually(lambda: reader.statistics()["invalidations_received"] >= 1,
                         "the reader hears of the cancelled write")
        assert await reader.get("k") == expected
        async with CachedStore(shared, redis_url=REDIS_URL, close_inner=False) as third:
            assert await third.get("k") == expected


# ---------------------------------------------------------------------- two processes

async def child(inner_url: str, redis_url: str) -> None:
    """The second process: answers one JSON command a line on stdin."""
    store = CachedStore(open_store(inner_url), redis_url=redis_url, local_ttl=600)
    async with store:
        print(json.dumps({"ready": True}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = json.loads(line)
            if command["op"] == "get":
                value = await store.get(command["key"])
                await store.drain()  # a miss's Redis fill is sent before the answer
                reply: dict[str, Any] = {"value": value.decode() if value else None}
            elif command["op"] == "wait_invalidations":
                while store.statistics()["invalidations_received"] < command["count"]:
                    await asyncio.sleep(0.0005)
                reply = {"at": time.time()}
            else:
                await store.put(command["key"], command["value"].encode())
                reply = {"at": time.time()}
            reply["stats"] = store.statistics()
            print(json.dumps(reply), flush=True)


class Child:
    def __init__(self, inner_url: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "child", inner_url, REDIS_URL],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(ROOT))

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()
        return self.read()

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the child process died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=20)


async def test_two_processes_see_each_others_writes(tmp_path: Path) -> None:
    ns = namespace()
    inner_url = f"sqlite:///{tmp_path}/shared.db?namespace={ns}"
    async with CachedStore(open_store(inner_url), redis_url=REDIS_URL, local_ttl=600) as parent:
        await parent.put("session:1", doc(1))
        child = Child(inner_url)
        try:
            assert await asyncio.to_thread(child.read) == {"ready": True}
            first = await asyncio.to_thread(child.ask, op="get", key="session:1")
            assert first["value"] == doc(1).decode()
            assert first["stats"]["inner_reads"] == 1
            again = await asyncio.to_thread(child.ask, op="get", key="session:1")
            assert again["value"] == doc(1).decode() and again["stats"]["redis_hits"] == 1
            third = await asyncio.to_thread(child.ask, op="get", key="session:1")
            assert third["value"] == doc(1).decode() and third["stats"]["local_hits"] == 1

            latencies = []
            for n in range(2, 7):
                await parent.put("session:1", doc(n))
                written_at = time.time()
                heard = await asyncio.to_thread(
                    child.ask, op="wait_invalidations", count=n - 1)
                latencies.append(heard["at"] - written_at)
                seen = await asyncio.to_thread(child.ask, op="get", key="session:1")
                assert seen["value"] == doc(n).decode()
            print(f"\ninvalidation latency parent -> child: "
                  f"{', '.join(f'{1000 * s:.2f} ms' for s in latencies)}")

            # And the other way round: the child writes, the parent's local copy goes.
            assert await parent.get("session:1") == doc(6)
            assert await parent.get("session:1") == doc(6)
            before = parent.statistics()["invalidations_received"]
            await asyncio.to_thread(child.ask, op="put", key="session:1",
                                    value=doc(7).decode())
            await eventually(lambda: parent.statistics()["invalidations_received"] > before,
                             "the parent hears the child's write")
            assert await parent.get("session:1") == doc(7)
        finally:
            await asyncio.to_thread(child.stop)


# ---------------------------------------------------------------------- outage


class RedisServer:
    """A redis-server of our own, to stop, pause and restart (never the shared one)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (bash scripts/services.sh installs it)"
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    return
            except OSError:
                await asyncio.sleep(0.025)
        raise AssertionError("our redis-server did not come up")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.resume()
        server.stop()


def outage_warnings(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "kvsessions.wrappers.cache" and r.levelno == logging.WARNING]


async def test_redis_stopped_mid_run_loses_nothing_and_comes_back(
    caplog: Any, own_redis: RedisServer
) -> None:
    caplog.set_level(logging.INFO, logger="kvsessions.wrappers.cache")
    server = own_redis
    ns = namespace()
    shared = MemoryStore(namespace=ns)
    options: dict[str, Any] = {"redis_url": server.url, "redis_timeout": 0.2,
                               "retry_interval": 0.1, "close_inner": False}
    a = CachedStore(shared, **options)
    b = CachedStore(shared, **options)
    async with a, b:
        expected: dict[str, bytes] = {}
        stop = asyncio.Event()

        async def workload(store: CachedStore, name: str) -> int:
            n = 0
            while not stop.is_set():
                key = f"{name}:{n % 20}"
                value = doc(n)
                await store.put(key, value)
                expected[key] = value
                assert await store.get(key) == value
                assert (await store.get_many([key]))[0] == value
                n += 1
                await asyncio.sleep(0)
            return n

        tasks = [asyncio.create_task(workload(a, "a")), asyncio.create_task(workload(b, "b"))]
        await asyncio.sleep(0.2)
        server.stop()
        await eventually(lambda: not a.statistics()["redis_available"]
                         and not b.statistics()["redis_available"], "both notice the outage")
        during = [a.statistics()["inner_reads"], b.statistics()["inner_reads"]]
        await asyncio.sleep(0.4)  # many calls with Redis gone
        assert a.statistics()["inner_reads"] > during[0]
        assert len(outage_warnings(caplog)) == 2  # one per store, not one per call
        await server.start()
        await eventually(lambda: a.statistics()["redis_available"]
                         and b.statistics()["redis_available"], "both come back")
        await asyncio.sleep(0.2)
        stop.set()
        counts = await asyncio.gather(*tasks)
        assert min(counts) > 10
        assert len(outage_warnings(caplog)) == 2
        assert any("is back" in r.getMessage() for r in caplog.records)
        for key, value in expected.items():  # nothing lost, nothing stale
            assert await shared.get(key) == value
            assert await a.get(key) == value
            assert await b.get(key) == value
        hits_before = a.statistics()["redis_hits"]
        await a.drain()
        await b.drain()
        for key in expected:
            if key.startswith("b:"):
                a._local.drop(key)  # force the Redis tier
                assert await a.get(key) == expected[key]
        assert a.statistics()["redis_hits"] > hits_before  # the tier is in use again


async def test_paused_redis_missed_invalidations_are_replayed(
    caplog: Any, own_redis: RedisServer
) -> None:
    """A slow (paused) Redis keeps its data: the value cached before the pause must not come
    back after it, because the writes made meanwhile are announced on recovery."""
    caplog.set_level(logging.INFO, logger="kvsessions.wrappers.cache")
    server = own_redis
    ns = namespace()
    shared = MemoryStore(namespace=ns)
    options: dict[str, Any] = {"redis_url": server.url, "redis_timeout": 0.2,
                               "retry_interval": 0.1, "close_inner": False}
    a = CachedStore(shared, **options)
    b = CachedStore(shared, **options)
    async with a, b:
        await a.put("k", doc(1))
        assert await b.get("k") == doc(1)
        await b.drain()
        assert await cached_in_redis(a, "k", server.url) is not None

        server.pause()
        started = time.perf_counter()
        await a.put("k", doc(2))            # inner write done; Redis cannot be told
        took = time.perf_counter() - started
        assert a.statistics()["pending_invalidations"] == 1
        assert await a.get("k") == doc(2)   # straight from the inner store
        for n in range(20):
            await a.put(f"other{n}", doc(n))
        assert len(outage_warnings(caplog)) == 1
        print(f"\nput with Redis paused took {1000 * took:.0f} ms (timeout 200 ms)")

        server.resume()
        await eventually(lambda: a.statistics()["redis_available"]
                         and a.statistics()["pending_invalidations"] == 0, "a recovers")
        await eventually(lambda: b.statistics()["invalidations_received"] >= 1,
                         "b hears the replayed invalidation")
        assert await cached_in_redis(a, "k", server.url) is None
        assert await b.get("k") == doc(2)
        assert await a.get("k") == doc(2)


async def test_store_opens_and_works_while_redis_is_down(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="kvsessions.wrappers.cache")
    server = RedisServer()  # never started: connection refused
    ns = namespace()
    async with CachedStore(MemoryStore(namespace=ns), redis_url=server.url,
                           redis_timeout=0.1, retry_interval=0.1) as store:
        for n in range(30):
            await store.put(f"k{n}", doc(n))
            assert await store.get(f"k{n}") == doc(n)
        assert await store.get_many(["k1", "k2"]) == [doc(1), doc(2)]
        assert store.statistics()["redis_available"] is False
        assert store.statistics()["local_hits"] == 0  # no local tier without invalidations
        assert len(outage_warnings(caplog)) == 1
        await server.start()
        try:
            await eventually(lambda: store.statistics()["redis_available"], "tier comes up")
            assert store.statistics()["pending_invalidations"] == 0
            assert await store.get("k3") == doc(3)   # miss: fills Redis
            await store.drain()
            assert await store.get("k3") == doc(3)   # Redis hit: fills the local tier
            assert await store.get("k3") == doc(3)
            assert store.statistics()["local_hits"] == 1
        finally:
            server.stop()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "child":
    asyncio.run(child(sys.argv[2], sys.argv[3]))
