"""PostgreSQL on 127.0.0.1:5432 (bash scripts/services.sh), or KVSESSIONS_TEST_POSTGRES_URL.
A server that cannot be reached fails the tests. Each test's tables are dropped afterwards."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import asyncpg

from kvsessions.kv.postgresql import PostgreSQLStore
from kvsessions.testing import StoreFactory

POSTGRES_URL = os.environ.get(
    "KVSESSIONS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def drop_tables(url: str, namespaces: set[str]) -> None:
    """Drop the table of every namespace a test used (each name was checked by the store)."""
    if not namespaces:
        return
    connection = await asyncpg.connect(url, timeout=10)
    try:
        for namespace in sorted(namespaces):
            await connection.execute(f'DROP TABLE IF EXISTS "{namespace}"')
        if await connection.fetchval("SELECT to_regclass('\"kvsessions-layouts\"')"):
            await connection.execute('DELETE FROM "kvsessions-layouts" WHERE name = ANY($1)',
                                     sorted(namespaces))
    finally:
        await connection.close()


def postgresql(request: Any, tmp_path: Path) -> StoreFactory:
    return _factory(request, None)


def postgresql_partitioned(request: Any, tmp_path: Path) -> StoreFactory:
    """Tables ``PARTITION BY HASH`` on the key's partition, in 4 partitions."""
    return _factory(request, 4)


def _factory(request: Any, partitions: int | None) -> StoreFactory:
    # Small pools: many test processes share one server's connection limit.
    factory = StoreFactory(lambda namespace: PostgreSQLStore(
        POSTGRES_URL, namespace=namespace, max_pool_size=4, partitions=partitions))

    async def cleanup() -> None:
        namespaces = set(factory.used_namespaces)
        factory.used_namespaces.clear()
        await drop_tables(POSTGRES_URL, namespaces)

    def cleanup_leftovers() -> None:
        # Tests that do not use the ``store`` fixture (the state machine) still leave no table.
        if factory.used_namespaces:
            asyncio.run(cleanup())

    factory.cleanup = cleanup
    request.addfinalizer(cleanup_leftovers)
    return factory


BACKENDS = {"postgresql": postgresql, "postgresql_partitioned": postgresql_partitioned}
