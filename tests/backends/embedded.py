"""Stores that need no server: memory, a folder of files, SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvsessions.kv.file import FileStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.sqlite import SQLiteStore
from kvsessions.testing import StoreFactory


def memory(request: Any, tmp_path: Path) -> StoreFactory:
    return StoreFactory(lambda ns: MemoryStore(namespace=ns), persistent=False)


def sqlite(request: Any, tmp_path: Path) -> StoreFactory:
    # Every namespace of a test in one file, as applications sharing a database would.
    path = tmp_path / "store.db"
    return StoreFactory(lambda ns: SQLiteStore(path, namespace=ns))


def file(request: Any, tmp_path: Path) -> StoreFactory:
    root = tmp_path / "files"
    return StoreFactory(lambda ns: FileStore(root, namespace=ns))


BACKENDS = {"file": file, "memory": memory, "sqlite": sqlite}
