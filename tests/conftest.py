"""Fixtures shared by every test: ``store_factory`` runs a test once per backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kvsessions.kv.base import KVStore
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from tests.backends import ALL as BACKENDS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", action="append", default=[],
                     help="run store tests only on these backends (repeatable)")
    parser.addoption("--soak", type=int, default=1,
                     help="multiply the counts of reliability tests by this factor")


def selected_backends(config: pytest.Config) -> list[str]:
    chosen = config.getoption("--backend") or os.environ.get("KVSESSIONS_TEST_BACKENDS", "")
    names = chosen if isinstance(chosen, list) and chosen else [
        n for n in str(chosen).split(",") if n]
    if not names:
        return list(BACKENDS)
    unknown = set(names) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {sorted(unknown)}; known: {list(BACKENDS)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", selected_backends(metafunc.config))


@pytest.fixture
def store_factory(backend_name: str, request: Any, tmp_path: Path) -> StoreFactory:
    return BACKENDS[backend_name](request, tmp_path)


@pytest.fixture
def soak(request: Any) -> int:
    return int(request.config.getoption("--soak"))


@pytest.fixture
async def stores(request: Any, tmp_path: Path) -> AsyncIterator[Callable[[str], KVStore]]:
    """``make(backend_name)``: a new store of that backend in a fresh namespace (tests that
    pair stores, such as migrations); all are closed and cleaned up after the test."""
    factories: dict[str, StoreFactory] = {}
    opened: list[KVStore] = []

    def make(name: str) -> KVStore:
        if name not in factories:
            factories[name] = BACKENDS[name](request, tmp_path)
        store = factories[name].new("pair_" + uuid.uuid4().hex[:12])
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
    for factory in factories.values():
        if factory.cleanup is not None:
            await factory.cleanup()


@pytest.fixture
async def storage(store_factory: StoreFactory) -> AsyncIterator[SessionStorage]:
    """A ``SessionStorage`` right on the backend's store (suites that count or record store
    calls define their own, on a wrapper)."""
    storage = SessionStorage(store_factory.new())
    await storage.initialize()
    try:
        yield storage
    finally:
        await storage.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()
