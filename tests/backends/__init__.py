"""One module per store (or wrapper) the conformance suite runs on.

Each module defines ``BACKENDS``: a dict from a backend name to a function
``(request, tmp_path) -> StoreFactory``. A new adapter joins every suite by adding a module
here; no test is copied. Server backends fail (never skip) when their server is unreachable.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from kvsessions.kv.base import KVStore
from kvsessions.testing import StoreFactory

BackendMaker = Callable[[Any, Path], StoreFactory]
_Store = TypeVar("_Store", bound=KVStore)


@contextlib.asynccontextmanager
async def store_of(factory: StoreFactory,
                   wrap: Callable[[KVStore], _Store]) -> AsyncIterator[_Store]:
    """A new store of ``factory`` in ``wrap`` (a recording or counting wrapper, say), closed and
    its namespace cleaned up after the test."""
    store = wrap(factory.new())
    try:
        yield store
    finally:
        await store.close()
        if factory.cleanup is not None:
            await factory.cleanup()


def discover() -> dict[str, BackendMaker]:
    found: dict[str, BackendMaker] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        found.update(getattr(module, "BACKENDS", {}))
    return dict(sorted(found.items()))


ALL = discover()
