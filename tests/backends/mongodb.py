"""MongoDB through SecantusDB (or the server KVSESSIONS_TEST_MONGODB_URL names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvsessions.kv.mongodb import MongoDBStore
from kvsessions.testing import StoreFactory
from tests.mongo_server import drop_collections, mongodb_url


def mongodb(request: Any, tmp_path: Path) -> StoreFactory:
    url = mongodb_url()
    factory = StoreFactory(lambda namespace: MongoDBStore(url, namespace=namespace))
    # A finalizer, not ``cleanup``: it also covers the state machine's namespaces.
    request.addfinalizer(lambda: drop_collections(factory.used_namespaces))
    return factory


BACKENDS = {"mongodb": mongodb}
