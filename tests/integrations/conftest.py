"""Fixtures of the integration tests: each test runs on SQLite, PostgreSQL, Redis and MongoDB
(of the backends ``--backend`` / ``KVSESSIONS_TEST_BACKENDS`` select), through the stores of
``tests/backends`` and their cleanup. ``integration_store.url()`` names the same data as a URL,
for adapters built from a URL and for child processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvsessions.kv.base import KVStore
from kvsessions.testing import StoreFactory
from tests.backends import ALL as BACKENDS
from tests.backends.postgresql import POSTGRES_URL
from tests.backends.redis import REDIS_URL
from tests.conftest import selected_backends
from tests.mongo_server import mongodb_url

#: The stores every integration is tested on (issue 17).
INTEGRATION_BACKENDS = ("sqlite", "postgresql", "redis", "mongodb")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A name of its own: modules that parametrize ``integration_backend`` themselves are
    # left alone.
    if "integration_store_backend" in metafunc.fixturenames:
        chosen = [name for name in selected_backends(metafunc.config)
                  if name in INTEGRATION_BACKENDS]
        metafunc.parametrize("integration_store_backend", chosen)


@dataclass
class IntegrationStore:
    """One test's namespace on one backend, as a store or as a URL."""

    backend: str
    factory: StoreFactory
    folder: Path

    def store(self) -> KVStore:
        """A new, unopened handle on the test's namespace."""
        return self.factory.new()

    def url(self) -> str:
        """The test's namespace as a store URL."""
        namespace = self.factory.namespace
        self.factory.used_namespaces.add(namespace)
        base = {"sqlite": f"sqlite:///{self.folder / 'store.db'}", "postgresql": POSTGRES_URL,
                "redis": REDIS_URL, "mongodb": mongodb_url()}[self.backend]
        return f"{base}{'&' if '?' in base else '?'}namespace={namespace}"


@pytest.fixture
async def integration_store(integration_store_backend: str, request: Any,
                            tmp_path: Path) -> AsyncIterator[IntegrationStore]:
    factory = BACKENDS[integration_store_backend](request, tmp_path)
    yield IntegrationStore(integration_store_backend, factory, tmp_path)
    if factory.cleanup is not None:
        await factory.cleanup()


def child_environment() -> dict[str, str]:
    """The environment of a child process: this one's, with the repository importable."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
