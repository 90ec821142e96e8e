"""``STORAGE_MIN_POOL_SIZE`` / ``STORAGE_MAX_POOL_SIZE`` reach every store that keeps a pool
and are refused where they cannot apply, never silently ignored (issue 15, item 10)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from kvsessions.config import StorageConfig, create_storage
from kvsessions.errors import ConfigError
from kvsessions.kv.mongodb import MongoDBStore
from kvsessions.kv.redis import RedisStore
from tests.backends.postgresql import POSTGRES_URL
from tests.backends.redis import REDIS_URL
from tests.mongo_server import drop_collections, mongodb_url


@pytest.fixture
def namespace() -> Iterator[str]:
    name = "pools_" + uuid.uuid4().hex[:12]
    yield name
    drop_collections([name])


async def test_mongodb_gets_both_pool_sizes(namespace: str) -> None:
    config = StorageConfig.from_env({
        "STORAGE_BACKEND": "mongodb", "STORAGE_CONNECTION_STRING": mongodb_url(),
        "STORAGE_MIN_POOL_SIZE": "2", "STORAGE_MAX_POOL_SIZE": "7"})
    config.options["namespace"] = namespace
    storage = create_storage(config)
    await storage.initialize()
    try:
        store = storage.store
        assert isinstance(store, MongoDBStore)
        client = store._collection.database.client  # this event loop's client
        pool = client.options.pool_options  # the driver's own account of its pool
        assert (pool.min_pool_size, pool.max_pool_size) == (2, 7)
    finally:
        await storage.close()


async def test_redis_gets_the_maximum_and_refuses_a_minimum() -> None:
    for environ in ({"STORAGE_BACKEND": "redis", "STORAGE_CONNECTION_STRING": REDIS_URL},
                    {"STORAGE_URL": REDIS_URL}):
        storage = create_storage(StorageConfig.from_env({**environ,
                                                         "STORAGE_MAX_POOL_SIZE": "7"}))
        await storage.initialize()
        try:
            assert isinstance(storage.store, RedisStore)
            assert storage.store._max_connections == 7
        finally:
            await storage.close()
        with pytest.raises(ConfigError, match=r"STORAGE_MIN_POOL_SIZE\) set, but Redis opens"):
            StorageConfig.from_env({**environ, "STORAGE_MIN_POOL_SIZE": "1"})


def test_a_url_from_the_environment_takes_the_pool_sizes_unless_it_has_its_own() -> None:
    config = StorageConfig.from_env({"STORAGE_URL": POSTGRES_URL,
                                     "STORAGE_MIN_POOL_SIZE": "1", "STORAGE_MAX_POOL_SIZE": "3"})
    assert config.store_url() == f"{POSTGRES_URL}?min_pool_size=1&max_pool_size=3"
    own = StorageConfig.from_env({"STORAGE_URL": f"{POSTGRES_URL}?max_pool_size=9",
                                  "STORAGE_MAX_POOL_SIZE": "3"})
    assert own.store_url() == f"{POSTGRES_URL}?max_pool_size=9"
    untouched = StorageConfig.from_env({"STORAGE_URL": REDIS_URL})
    assert untouched.store_url() == REDIS_URL


@pytest.mark.parametrize("environ", [
    {"STORAGE_MAX_POOL_SIZE": "20"},  # the default value, but set: still refused
    {"STORAGE_BACKEND": "file", "STORAGE_MIN_POOL_SIZE": "1"},
    {"STORAGE_URL": "memory://", "STORAGE_MAX_POOL_SIZE": "3"},
])
def test_pool_sizes_for_a_store_without_a_pool_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="keeps no connection pool"):
        StorageConfig.from_env(environ)
    with pytest.raises(ConfigError, match="keeps no connection pool"):
        StorageConfig(backend="sqlite", max_pool_size=4)
