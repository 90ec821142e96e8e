"""CachedStore is a store too: the whole contract runs through both tiers, on real Redis
(127.0.0.1:6379 or KVSESSIONS_TEST_REDIS_URL), around memory, SQLite and PostgreSQL.
A Redis that cannot be reached fails the tests. Each test's cache keys are deleted afterwards
(and its PostgreSQL tables dropped)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from kvsessions.kv.base import KVStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.registry import open_store
from kvsessions.testing import StoreFactory
from kvsessions.urls import check_namespace
from kvsessions.wrappers.cache import CachedStore

REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "KVSESSIONS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def forget_cache(namespaces: Iterable[str], redis_url: str = REDIS_URL) -> None:
    """Delete every cache key of ``namespaces`` (the default key prefix) from Redis."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for namespace in namespaces:
            names = [name async for name in client.scan_iter(match=f"kvcache:{namespace}:*",
                                                             count=1000)]
            for start in range(0, len(names), 1000):
                await client.delete(*names[start:start + 1000])
    finally:
        await client.aclose()


def cached_factory(
    request: Any,
    make_inner: Callable[[str], KVStore],
    *,
    persistent: bool,
    drop_inner: Callable[[set[str]], Awaitable[None]] | None = None,
    **cache_options: Any,
) -> StoreFactory:
    """A factory of CachedStores around ``make_inner(namespace)`` that cleans up after itself."""
    cache_options.setdefault("redis_ttl", 600)

    def make(namespace: str) -> KVStore:
        check_namespace(namespace)  # before it goes into a URL
        return CachedStore(make_inner(namespace), redis_url=REDIS_URL, **cache_options)

    factory = StoreFactory(make, persistent=persistent)

    async def cleanup() -> None:
        namespaces = set(factory.used_namespaces)
        factory.used_namespaces.clear()
        await forget_cache(namespaces)
        if drop_inner is not None:
            await drop_inner(namespaces)

    def cleanup_leftovers() -> None:
        # The state machine does not use the ``store`` fixture and so not ``cleanup``.
        if factory.used_namespaces:
            asyncio.run(cleanup())

    factory.cleanup = cleanup
    request.addfinalizer(cleanup_leftovers)
    return factory


def cached_memory(request: Any, tmp_path: Path) -> StoreFactory:
    return cached_factory(request, lambda ns: MemoryStore(namespace=ns), persistent=False)


def cached_sqlite(request: Any, tmp_path: Path) -> StoreFactory:
    return cached_factory(
        request, lambda ns: open_store(f"sqlite:///{tmp_path}/cached.db?namespace={ns}"),
        persistent=True)


async def _drop_tables(namespaces: set[str]) -> None:
    from tests.backends.postgresql import drop_tables  # the PostgreSQL tests' own cleanup

    await drop_tables(POSTGRES_URL, namespaces)


def cached_postgresql(request: Any, tmp_path: Path) -> StoreFactory:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return cached_factory(
        request,
        lambda ns: open_store(f"{POSTGRES_URL}{separator}namespace={ns}&max_pool_size=4"),
        persistent=True, drop_inner=_drop_tables)


BACKENDS = {
    "cached_memory": cached_memory,
    "cached_sqlite": cached_sqlite,
    "cached_postgresql": cached_postgresql,
}
