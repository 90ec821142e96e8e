"""A store that a command only reads (or maintains) must exist already: ``ls``, ``show``,
``stats``, ``verify``, ``validate``, ``export``, ``backup``, ``upgrade``, ``cleanup`` and the
source of ``migrate`` look before opening, because opening an embedded store makes what is
missing (the folders, the database file, the table) and the command would then report an
empty store it had just created, or add a table to another application's database.

What is looked at, without writing anything: for SQLite the file, and its table through a
read-only connection (``mode=ro``, which creates nothing; SQLite's own ``-wal``/``-shm`` files
appear only beside a database already in WAL mode); for the folder store the namespace's folder.
A server store makes its table on first use and has nothing to look at before connecting.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from kvsessions.errors import StoreNotFoundError
from kvsessions.kv.base import KVStore
from kvsessions.kv.file import FileStore
from kvsessions.kv.sqlite import SQLiteStore

__all__ = ["check_store_exists"]

_MEMORY = ":memory:"


def check_store_exists(store: KVStore, shown: str) -> None:
    """``StoreNotFoundError`` naming ``shown`` (the redacted URL) and what is missing, when
    the store is an embedded one that is not there. Blocking: run it on a worker thread."""
    reason = None
    if isinstance(store, SQLiteStore) and store.path != _MEMORY:
        reason = _sqlite_missing(Path(store.path), store.namespace)
    elif isinstance(store, FileStore):
        reason = _folder_missing(store.folder)
    if reason is not None:
        raise StoreNotFoundError(f"no kvsessions store at {shown}: {reason}; nothing was created")


def _folder_missing(folder: Path) -> str | None:
    if folder.is_dir():
        return None
    if folder.exists():
        return f"{folder} is not a folder"
    return f"the folder {folder} does not exist"


def _sqlite_missing(path: Path, table: str) -> str | None:
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is {'a folder' if path.is_dir() else 'not a regular file'}"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(os.fspath(path))}?mode=ro",
                                                uri=True)) as db:
            tables = [name for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    except sqlite3.DatabaseError as exc:
        return f"{path} is not a SQLite database ({exc})"
    if table.lower() in (name.lower() for name in tables):
        return None
    held = ", ".join(repr(name) for name in tables[:8]) or "none"
    more = ", ..." if len(tables) > 8 else ""
    return (f"{path} has no table {table!r} for the namespace (its tables: {held}{more}; "
            "another namespace is chosen with ?namespace=NAME)")
