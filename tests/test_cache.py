"""CachedStore's own logic: tiers and statistics, ttl caps, failed inner writes, bulk Redis
calls, configuration. Real Redis (127.0.0.1:6379 or KVSESSIONS_TEST_REDIS_URL) where a tier is
involved; the cross-process behaviour is in test_cache_coherence.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from kvsessions.errors import ConfigError, StoreError, StoreUnavailableError
from kvsessions.kv.base import KVStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.redis import RedisStore
from kvsessions.kv.registry import open_store
from kvsessions.wrappers.base import StoreWrapper
from kvsessions.wrappers.cache import CachedStore
from tests.backends.cached import REDIS_URL, forget_cache


def doc(n: int) -> bytes:
    return orjson.dumps({"n": n})


@pytest.fixture
async def ns() -> AsyncIterator[str]:
    name = "cu_" + uuid.uuid4().hex[:12]
    yield name
    await forget_cache([name])


class CountingRedis(aioredis.Redis):
    """Counts the commands sent, to check that batches use Redis in bulk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]).upper())
        return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def counted(raise_on_error: bool = True) -> Any:
            self.commands.append("PIPELINE")  # one round trip
            self.commands.extend(str(args[0]).upper() for args, _ in pipe.command_stack)
            return await execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


class FailingStore(StoreWrapper):
    """Fails writes on demand, with a chosen error."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(inner)
        self.fail_with: Exception | None = None

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        await self.inner._put(key, value, ttl)


# ---------------------------------------------------------------------- tiers


async def test_reads_go_local_then_redis_then_inner_and_fill_back(ns: str) -> None:
    inner = MemoryStore(namespace=ns)
    async with CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as first, \
            CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as second:
        await inner.put("k", doc(1))                  # behind the cache's back: not cached
        assert await first.get("k") == doc(1)         # miss: the inner store, a Redis fill
        await first.drain()
        assert first.statistics()["local_entries"] == 0  # a miss cannot know the ttl
        assert await first.get("k") == doc(1)         # Redis hit, which fills the local tier
        assert await first.get("k") == doc(1)         # local hit
        assert await second.get("k") == doc(1)        # Redis hit
        assert await second.get("k") == doc(1)        # local hit
        one, two = first.statistics(), second.statistics()
        assert (one["inner_reads"], one["redis_fills"], one["redis_hits"],
                one["local_hits"]) == (1, 1, 1, 1)
        assert (two["inner_reads"], two["redis_hits"], two["local_hits"]) == (0, 1, 1)
        assert one["redis_available"] and one["local_entries"] == 1
        assert await first.get("missing") is None
        assert first.statistics()["inner_reads"] == 2


async def test_local_only_mode_keeps_own_writes_and_ttls() -> None:
    async with CachedStore(MemoryStore(), local_ttl=60) as store:
        await store.put("k", doc(1))
        assert await store.get("k") == doc(1)
        assert store.statistics()["local_hits"] == 1
        assert store.statistics()["redis_configured"] is False
        await store.put("short", doc(2), ttl=0.3)
        assert await store.get("short") == doc(2)
        store._local.clear()                          # evicted: the fill must know the ttl
        assert await store.get("short") == doc(2)
        await asyncio.sleep(0.45)
        assert await store.get("short") is None
        await store.delete("k")
        assert await store.get("k") is None


async def test_ttl_caps_every_tier_even_when_another_store_fills(ns: str) -> None:
    inner = MemoryStore(namespace=ns)
    async with CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as writer, \
            CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as reader:
        await writer.put("short", doc(1), ttl=0.5)
        assert await reader.get("short") == doc(1)   # a miss: fills Redis
        await reader.drain()
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert 0 < await client.pttl(f"{reader.key_prefix}v:short") <= 500
        finally:
            await client.aclose()
        assert await reader.get("short") == doc(1)   # a Redis hit: fills the local tier
        assert reader.statistics()["local_entries"] == 1
        await asyncio.sleep(0.7)
        assert await reader.get("short") is None
        assert await reader.get_many(["short"]) == [None]
        assert await writer.get("short") is None


async def redis_pttl(store: CachedStore, key: str) -> int:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return int(await client.pttl(f"{store.key_prefix}v:{key}"))
    finally:
        await client.aclose()


async def test_deadline_outlives_the_tombstone(ns: str) -> None:
    """The tombstone is gone (Redis evicted it, say) long before the ttl ends: a reader that
    then finds an empty slot still caps its fill by the deadline kept in Redis."""
    inner = MemoryStore(namespace=ns)
    async with CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as writer, \
            CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as reader:
        await writer.put("k", doc(1), ttl=0.8)
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert await client.delete(f"{reader.key_prefix}v:k") == 1
        finally:
            await client.aclose()
        assert await reader.get("k") == doc(1)
        await reader.drain()
        assert 0 < await redis_pttl(reader, "k") <= 800      # the ttl, not redis_ttl's hour
        await asyncio.sleep(0.9)
        assert await reader.get("k") is None


async def test_ambiguous_write_keeps_the_earlier_deadline(ns: str) -> None:
    """A write that may not have landed leaves the old ttl in force for fills: capping a
    value early is harmless, keeping an expired one is not."""
    inner = FailingStore(MemoryStore(namespace=ns))
    async with CachedStore(inner, redis_url=REDIS_URL) as writer, \
            CachedStore(inner.inner, redis_url=REDIS_URL, close_inner=False) as reader:
        # A ttl long enough for a loaded machine to reach the reads before it ends; the
        # sleep below waits for the deadline itself, not for a fixed time.
        deadline = time.monotonic() + 2.0
        await writer.put("k", doc(1), ttl=2.0)
        inner.fail_with = ConnectionResetError("connection lost after sending the write")
        with pytest.raises(StoreUnavailableError):
            await writer.put("k", doc(2))                 # did not land: doc(1) keeps its ttl
        assert await reader.get("k") == doc(1)
        await reader.drain()
        assert 0 < await redis_pttl(reader, "k") <= 2000
        await asyncio.sleep(deadline - time.monotonic() + 0.2)
        assert await reader.get("k") is None


async def test_get_many_mixes_tiers_and_keeps_order(ns: str) -> None:
    inner = MemoryStore(namespace=ns)
    async with CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as store:
        await inner.put_many([(f"k{i}", doc(i)) for i in range(6)])
        assert await store.get("k0") == doc(0)        # inner; fills Redis only
        assert await store.get("k1") == doc(1)        # inner; fills Redis only
        await store.drain()
        assert await store.get("k1") == doc(1)        # Redis hit; now local too
        values = await store.get_many(["k5", "k0", "nope", "k1", "k5", "k3"])
        assert values == [doc(5), doc(0), None, doc(1), doc(5), doc(3)]
        stats = store.statistics()                    # k1 local, k0 Redis, the rest inner
        assert stats["local_hits"] == 1
        assert stats["redis_hits"] == 2 and stats["inner_reads"] == 2 + 3


async def test_batches_use_redis_in_bulk(ns: str) -> None:
    client = CountingRedis.from_url(REDIS_URL)
    try:
        async with CachedStore(MemoryStore(namespace=ns), redis=client) as store:
            client.commands.clear()
            await store.put_many([(f"k{i}", doc(i)) for i in range(300)])
            # 256 keys per script call, each phase (mark before the inner write, invalidate
            # after it) in one round trip.
            assert client.commands == ["PIPELINE", "EVALSHA", "EVALSHA"] * 2
            store._local.clear()
            client.commands.clear()
            assert len(await store.get_many([f"k{i}" for i in range(300)])) == 300
            await store.drain()
            assert client.commands.count("MGET") == 1
            assert client.commands.count("EVALSHA") == 2      # the fills, batched
            client.commands.clear()
            assert await store.delete_many([f"k{i}" for i in range(300)]) == 300
            assert client.commands == ["PIPELINE", "EVALSHA", "EVALSHA"] * 2
        assert await client.ping()                            # handed in: still open
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- failed writes


async def test_failed_inner_write_raises_and_leaves_the_tiers_alone(ns: str) -> None:
    inner = FailingStore(MemoryStore(namespace=ns))
    async with CachedStore(inner, redis_url=REDIS_URL) as store:
        await store.put("k", doc(1))
        assert await store.get("k") == doc(1)
        sent = store.statistics()["invalidations_sent"]
        inner.fail_with = ValueError("disk on fire")
        with pytest.raises(StoreError, match="disk on fire"):
            await store.put("k", doc(2))
        assert store.statistics()["invalidations_sent"] == sent
        assert store.statistics()["local_entries"] == 1
        assert await store.get("k") == doc(1)
        assert await inner.get("k") == doc(1)


async def test_ambiguous_inner_failure_drops_the_cached_copy(ns: str) -> None:
    inner = FailingStore(MemoryStore(namespace=ns))
    async with CachedStore(inner, redis_url=REDIS_URL) as store:
        await store.put("k", doc(1))
        assert await store.get("k") == doc(1)
        inner.fail_with = ConnectionResetError("connection lost after sending the write")
        with pytest.raises(StoreUnavailableError):
            await store.put("k", doc(2))
        # It may have landed: the next read must ask the inner store.
        assert store.statistics()["local_entries"] == 0
        reads = store.statistics()["inner_reads"]
        assert await store.get("k") == doc(1)
        assert store.statistics()["inner_reads"] == reads + 1


async def test_put_if_absent_updates_tiers_only_when_it_stored(ns: str) -> None:
    async with CachedStore(MemoryStore(namespace=ns), redis_url=REDIS_URL) as store:
        assert await store.put_if_absent("k", doc(1)) is True
        sent = store.statistics()["invalidations_sent"]
        assert await store.put_if_absent("k", doc(2)) is False
        assert store.statistics()["invalidations_sent"] == sent
        assert await store.get("k") == doc(1)
        assert store.statistics()["local_hits"] == 1


async def test_concurrent_writers_in_one_process_leave_no_stale_local_copy(ns: str) -> None:
    async with CachedStore(MemoryStore(namespace=ns), redis_url=REDIS_URL) as store:
        await asyncio.gather(*(store.put("hot", doc(i)) for i in range(30)))
        assert await store.get("hot") == await store.inner.get("hot")


# ---------------------------------------------------------------------- configuration


def test_configuration_errors() -> None:
    inner = MemoryStore()
    client = aioredis.Redis.from_url(REDIS_URL)
    decoding = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    with pytest.raises(ConfigError, match="not both"):
        CachedStore(inner, redis_url=REDIS_URL, redis=client)
    with pytest.raises(ConfigError, match="decode_responses"):
        CachedStore(inner, redis=decoding)
    for bad in ({"local_ttl": 0}, {"redis_ttl": -1}, {"redis_timeout": float("nan")},
                {"local_maxsize": -1}, {"local_maxsize": 1.5}, {"key_prefix": ""}):
        with pytest.raises(ConfigError):
            CachedStore(inner, **bad)
    with pytest.raises(ConfigError):
        CachedStore("memory://")  # type: ignore[arg-type]


def test_repr_and_errors_hide_the_redis_password() -> None:
    store = CachedStore(MemoryStore(), redis_url="redis://:s3cret-pw@127.0.0.1:6379/0")
    assert "s3cret-pw" not in repr(store)
    assert "CachedStore" in repr(store) and "MemoryStore" in repr(store)
    assert "s3cret-pw" in store._secrets


async def test_open_store_with_cache_url(ns: str) -> None:
    store = open_store(f"memory://?namespace={ns}", cache_url=REDIS_URL)
    assert isinstance(store, CachedStore) and store.namespace == ns
    async with store:
        await store.put("k", doc(1))
        assert await store.get("k") == doc(1)
        assert store.statistics()["redis_available"] is True


async def test_scan_reads_the_inner_store(ns: str) -> None:
    inner = MemoryStore(namespace=ns)
    async with CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as store:
        await store.put_many([("a", doc(1)), ("b", doc(2))])
        await inner.put("c", doc(3))
        assert await store.keys() == ["a", "b", "c"]
        assert [k async for k, _ in store.scan(reverse=True, limit=2)] == ["c", "b"]


# ---------------------------------------------------------------------- a failed open

_FAILED_OPEN_CHILD = """
import asyncio, sys
from kvsessions.kv.registry import open_store
from kvsessions.wrappers.base import StoreWrapper
from kvsessions.wrappers.cache import CachedStore

class BrokenOpen(StoreWrapper):
    async def _open(self):
        await self.inner.open()
        raise OSError("the disk went away half way through open")

async def main(mode, folder):
    inner = open_store(f"sqlite:///{folder}/cache.db")  # an aiosqlite thread once opened
    if mode == "inner fails":
        store = CachedStore(BrokenOpen(inner), redis_url=sys.argv[3])
    elif mode == "redis url refused":
        store = CachedStore(inner, redis_url="http://127.0.0.1:6379/0")
    else:  # Redis accepts but never answers, and the caller gives up on open()
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = CachedStore(inner, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=2)
    try:
        if mode == "open cancelled":
            await asyncio.wait_for(store.open(), 0.3)
        else:
            await store.open()
    except Exception as exc:
        print("open failed:", type(exc).__name__, flush=True)
    # No close(): a program that failed to open has nothing to close.

asyncio.run(main(sys.argv[1], sys.argv[2]))
print("returned", flush=True)
"""


@pytest.mark.parametrize("mode", ["inner fails", "redis url refused", "open cancelled"])
async def test_a_failed_open_closes_what_it_opened(mode: str, tmp_path: Any) -> None:
    """Else the inner store's connections and threads outlive the failure and the process
    never exits. The timeout only keeps a broken build from hanging the suite."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", _FAILED_OPEN_CHILD, mode, str(tmp_path),
                             REDIS_URL],
            capture_output=True, text=True, timeout=60, cwd=str(root))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{mode}: the process did not exit after a failed open") from None
    assert done.returncode == 0, done.stderr
    failed, returned = done.stdout.splitlines()
    assert failed.startswith("open failed: ") and returned == "returned"


# ---------------------------------------------------------------------- whose cache is it


async def test_two_databases_with_one_namespace_never_see_each_other(ns: str,
                                                                     tmp_path: Any) -> None:
    """The default key prefix names the inner store, not only its namespace: two SQLite files
    with the same namespace share one Redis without serving each other's documents."""
    urls = [f"sqlite:///{tmp_path}/{name}.db?namespace={ns}" for name in ("a", "b")]
    for n, url in enumerate(urls):
        async with open_store(url) as plain:      # behind the cache's back: nothing cached
            await plain.put("session:1", doc(n))
    first, second = (CachedStore(open_store(url), redis_url=REDIS_URL) for url in urls)
    async with first, second:
        assert await first.get("session:1") == doc(0)     # a miss: fills Redis
        await first.drain()
        assert await first.get("session:1") == doc(0)     # a Redis hit now
        assert first.statistics()["redis_hits"] == 1
        assert await second.get("session:1") == doc(1)    # its own file, not a's entry
        assert second.statistics()["redis_hits"] == 0
        await second.put("session:1", doc(2))
        await second.delete("session:1")
        await asyncio.sleep(0.05)
        assert first.statistics()["invalidations_received"] == 0  # not its channel
        first._local.clear()
        assert await first.get("session:1") == doc(0)
    # The same file, spelled another way, in another process: one cache.
    again = CachedStore(open_store(f"sqlite:///{tmp_path}/x/../a.db?namespace={ns}"),
                        redis_url=REDIS_URL)
    assert again.key_prefix == first.key_prefix


def test_the_default_prefix_names_the_database_without_secrets() -> None:
    def prefix(url: str) -> str | None:
        return CachedStore(open_store(url), redis_url=REDIS_URL).key_prefix

    one = prefix("postgresql://alice:pw-one@db.example:5432/app?namespace=chat")
    assert one is not None and one.startswith("kvcache:chat:") and "pw-one" not in one
    # Same database and namespace, another user and pool: one cache, as it must be.
    assert prefix("postgresql://bob:pw-two@DB.example:5432/app?namespace=chat"
                  "&max_pool_size=3") == one
    for other in ("postgresql://alice:pw-one@db.example:5432/other?namespace=chat",
                  "postgresql://alice:pw-one@db.example:5433/app?namespace=chat",
                  "postgresql://alice:pw-one@db2.example:5432/app?namespace=chat",
                  "postgresql://alice:pw-one@db.example:5432/app?namespace=chat2",
                  "redis://db.example:5432/0?namespace=chat"):
        assert prefix(other) != one, other
    assert prefix("memory://?namespace=chat") != prefix("memory://?namespace=chat")
    with pytest.raises(ConfigError, match="key_prefix"):
        CachedStore(RedisStore(client=aioredis.Redis.from_url(REDIS_URL), namespace="chat"),
                    redis_url=REDIS_URL)  # a client handed in: where is its database?


async def test_prefix_is_settable_from_the_cache_url(ns: str, tmp_path: Any) -> None:
    from kvsessions.config import StorageConfig, create_storage

    inner_url = f"sqlite:///{tmp_path}/s.db?namespace={ns}"
    store = open_store(inner_url, cache_url=f"{REDIS_URL}?prefix=kvcache:{ns}:mine:")
    assert isinstance(store, CachedStore) and store.key_prefix == f"kvcache:{ns}:mine:"
    async with store:
        await store.put("k", doc(1))
        store._local.clear()
        assert await store.get("k") == doc(1)
        await store.drain()
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert (await client.get(f"kvcache:{ns}:mine:v:k") or b"").endswith(doc(1))
        finally:
            await client.aclose()
    config = StorageConfig.from_env({"STORAGE_URL": inner_url,
                                     "STORAGE_CACHE_URL": f"{REDIS_URL}?prefix=kvcache:{ns}:env:"})
    cached = create_storage(config).store
    assert isinstance(cached, CachedStore) and cached.key_prefix == f"kvcache:{ns}:env:"
    with pytest.raises(ConfigError, match="give one"):
        CachedStore(MemoryStore(), redis_url=f"{REDIS_URL}?prefix=a:", key_prefix="b:")


# ---------------------------------------------------------------------- compare-and-set


class CasMemoryStore(MemoryStore):
    """A memory store with the contract's compare-and-set hook, written out here (the base
    class gets it separately). Nothing in it awaits, so it is atomic on the event loop; a
    closed ``gate`` holds the next call after it decided, as a slow server would."""

    gate: asyncio.Event | None = None

    async def _compare_and_set(self, key: str, expected: bytes | None, new: bytes | None,
                               ttl: float | None) -> bool:
        if await self._get(key) != expected:
            swapped = False
        else:
            if new is None:
                await self._delete(key)
            else:
                await self._put(key, new, ttl)
            swapped = True
        if self.gate is not None:
            await self.gate.wait()
        return swapped


async def redis_holds(store: CachedStore, key: str) -> bytes | None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        raw: bytes | None = await client.get(f"{store.key_prefix}v:{key}")
    finally:
        await client.aclose()
    return raw.partition(b"|")[2] if raw is not None and raw.startswith(b"E") else None


async def cached_everywhere(store: CachedStore, key: str) -> None:
    """Read ``key`` until it is in Redis and in the local tier."""
    store._local.clear()
    await store.get(key)
    await store.drain()
    await store.get(key)
    assert await redis_holds(store, key) is not None and store._local.hit(key) is not None


async def test_compare_and_set_invalidates_both_tiers_whatever_its_outcome(ns: str) -> None:
    inner = CasMemoryStore(namespace=ns)
    async with CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as store, \
            CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as other:
        await inner.put("k", doc(1))
        await cached_everywhere(store, "k")
        await cached_everywhere(other, "k")
        heard = other.statistics()["invalidations_received"]

        assert await store._compare_and_set("k", doc(1), doc(2), None) is True
        assert await redis_holds(store, "k") is None
        assert await store.get("k") == doc(2)   # its own write, from the local tier
        for _ in range(500):
            if other.statistics()["invalidations_received"] > heard:
                break
            await asyncio.sleep(0.01)
        assert await other.get("k") == doc(2)

        # Behind the cache's back the value changes; the cache still holds doc(2), so the
        # caller compares against it and loses. The stale copy must go all the same.
        await cached_everywhere(store, "k")
        await inner.put("k", doc(3))
        assert await store.get("k") == doc(2)
        sent = store.statistics()["invalidations_sent"]
        assert await store._compare_and_set("k", doc(2), doc(4), None) is False
        assert store.statistics()["invalidations_sent"] == sent + 1
        assert await redis_holds(store, "k") is None
        assert await store.get("k") == doc(3)
        assert await inner.get("k") == doc(3)

        assert await store._compare_and_set("k", doc(3), None, None) is True  # a delete
        assert await store.get("k") is None and await inner.get("k") is None
        assert await store._compare_and_set("k", None, doc(5), 60) is True    # absent -> put
        assert await store.get("k") == doc(5)


async def test_a_cancelled_compare_and_set_still_invalidates(ns: str) -> None:
    inner = CasMemoryStore(namespace=ns)
    async with CachedStore(inner, redis_url=REDIS_URL, close_inner=False) as store:
        await inner.put("k", doc(1))
        await cached_everywhere(store, "k")
        inner.gate = asyncio.Event()
        call = asyncio.create_task(store._compare_and_set("k", doc(1), doc(2), None))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.01)
        inner.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await inner.get("k") == doc(2)   # it landed
        assert await redis_holds(store, "k") is None
        assert await store.get("k") == doc(2)
