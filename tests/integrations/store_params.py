"""The stores the integration tests run on (SQLite, PostgreSQL, Redis, MongoDB, narrowed by
``--backend`` / ``KVSESSIONS_TEST_BACKENDS`` like every store test), as the fixture
``integration_stores``: a ``StoreFactory`` whose namespaces are dropped after the test.

A test module uses it with ``from tests.integrations.store_params import
integration_stores, pytest_generate_tests``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kvsessions.testing import StoreFactory
from tests.backends import ALL as BACKENDS
from tests.backends.postgresql import POSTGRES_URL
from tests.backends.redis import REDIS_URL
from tests.conftest import selected_backends
from tests.mongo_server import mongodb_url

__all__ = ["INTEGRATION_BACKENDS", "integration_stores", "pytest_generate_tests", "store_url"]

INTEGRATION_BACKENDS = ("sqlite", "postgresql", "redis", "mongodb")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "integration_backend" in metafunc.fixturenames:
        chosen = [name for name in selected_backends(metafunc.config)
                  if name in INTEGRATION_BACKENDS]
        metafunc.parametrize("integration_backend", chosen)


@pytest.fixture
def integration_stores(integration_backend: str, request: Any,
                       tmp_path: Path) -> Iterator[StoreFactory]:
    factory = BACKENDS[integration_backend](request, tmp_path)
    yield factory
    if factory.cleanup is not None:  # on a thread of its own: the test's loop may be set
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, factory.cleanup()).result()


def store_url(stores: StoreFactory, tmp_path: Path) -> str:
    """The test's namespace on its backend as a store URL (for adapters made from a URL)."""
    stores.used_namespaces.add(stores.namespace)
    backend = type(stores.new()).__name__
    base = {"SQLiteStore": f"sqlite:///{tmp_path / 'store.db'}", "PostgreSQLStore": POSTGRES_URL,
            "RedisStore": REDIS_URL, "MongoDBStore": mongodb_url()}[backend]
    return f"{base}{'&' if '?' in base else '?'}namespace={stores.namespace}"
