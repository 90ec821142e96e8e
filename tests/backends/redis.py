"""Redis on 127.0.0.1:6379 and a 3-node Redis Cluster on 127.0.0.1:7000-7002
(bash scripts/redis-cluster.sh start). A server that cannot be reached fails the tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kvsessions.kv.partitions import run_of
from kvsessions.kv.redis import RedisStore
from kvsessions.testing import StoreFactory

REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_CLUSTER_URL = os.environ.get(
    "KVSESSIONS_TEST_REDIS_CLUSTER_URL", "redis+cluster://127.0.0.1:7000")


async def drop_namespaces(url: str, namespaces: set[str]) -> None:
    """Delete every key of the namespaces a test used (values, indexes, directory)."""
    for namespace in namespaces:
        async with RedisStore(url, namespace=namespace) as store:
            await store._drop_namespace()


async def index_raw_key(store: RedisStore, key: str) -> bytes:
    """Make ``key`` part of the store's layout (its partition's index, its run in the
    directory) as the store's own writes would, for a test that then writes the value key
    itself; the name of that value key."""
    client: Any = store._client
    names = store._names(key)
    run = run_of(key).encode()
    await client.zadd(store._directory, {run: 0})
    await client.sadd(names.runs, run)
    await client.zadd(names.index, {key.encode(): 0})
    return names.value(key)


def _factory(url: str) -> StoreFactory:
    factory = StoreFactory(lambda namespace: RedisStore(url, namespace=namespace))

    async def cleanup() -> None:
        await drop_namespaces(url, factory.used_namespaces)

    factory.cleanup = cleanup
    return factory


def redis(request: Any, tmp_path: Path) -> StoreFactory:
    return _factory(REDIS_URL)


def redis_cluster(request: Any, tmp_path: Path) -> StoreFactory:
    return _factory(REDIS_CLUSTER_URL)


BACKENDS = {"redis": redis, "redis_cluster": redis_cluster}
