"""The seed's per-store conveniences: ``SQLiteSessionStorage(path)``,
``PostgreSQLSessionStorage(dsn, ...)`` and the rest, each a ``SessionStorage`` on the store its
arguments name (they build the store URL; ``SessionStorage.from_url`` takes any URL).

``durability=`` (``"normal"`` or ``"strict"``) is the URL option of that name, checked by the
store as it checks the URL's (None: the URL's, else the store's default)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from kvsessions.kv.registry import open_store
from kvsessions.sessions.storage import SessionStorage

__all__ = [
    "FileSessionStorage",
    "MemorySessionStorage",
    "MongoDBSessionStorage",
    "PostgreSQLSessionStorage",
    "RedisSessionStorage",
    "SQLiteSessionStorage",
]

def _with_query(url: str, **params: str | int | None) -> str:
    """``url`` with the given query parameters set (None leaves a parameter alone)."""
    base, _, query = url.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
             if k not in params or params[k] is None]
    pairs += [(k, str(v)) for k, v in params.items() if v is not None]
    return f"{base}?{urlencode(pairs)}" if pairs else base


def _path_url(scheme: str, path: str | os.PathLike[str]) -> str:
    """The URL of a file or folder, absolute: ``sqlite:////abs/x.db`` (after ``sqlite:///``
    comes the path, as SQLAlchemy reads it) and ``file:///abs/folder``."""
    absolute = str(Path(path).expanduser().absolute())
    return f"{scheme}://{'/' if scheme == 'sqlite' else ''}{quote(absolute)}"


class SQLiteSessionStorage(SessionStorage):
    """Sessions in one SQLite file (created when missing); ``":memory:"`` for a private one."""

    def __init__(self, path: str | os.PathLike[str] = "sessions.db", *,
                 namespace: str | None = None, durability: str | None = None) -> None:
        url = "sqlite:///:memory:" if str(path) == ":memory:" else _path_url("sqlite", path)
        super().__init__(open_store(_with_query(url, namespace=namespace,
                                                durability=durability)))


class FileSessionStorage(SessionStorage):
    """Sessions as files in a folder (one file per document), no database needed."""

    def __init__(self, directory: str | os.PathLike[str], *,
                 namespace: str | None = None, durability: str | None = None) -> None:
        url = _path_url("file", directory)
        super().__init__(open_store(_with_query(url, namespace=namespace,
                                                durability=durability)))


class MemorySessionStorage(SessionStorage):
    """Sessions in this process only (tests, demos): nothing survives ``close()``."""

    def __init__(self, *, namespace: str | None = None, durability: str | None = None) -> None:
        super().__init__(open_store(_with_query("memory://", namespace=namespace,
                                                durability=durability)))


class PostgreSQLSessionStorage(SessionStorage):
    """Sessions in a PostgreSQL table, through an asyncpg pool of the given sizes."""

    def __init__(self, dsn: str, min_pool_size: int = 5, max_pool_size: int = 20, *,
                 namespace: str | None = None, durability: str | None = None) -> None:
        url = _with_query(dsn, min_pool_size=min_pool_size, max_pool_size=max_pool_size,
                          namespace=namespace, durability=durability)
        super().__init__(open_store(url))


class MongoDBSessionStorage(SessionStorage):
    """Sessions in a MongoDB collection of ``database_name`` (or the URI's database)."""

    def __init__(self, uri: str, database_name: str | None = None, *,
                 namespace: str | None = None, durability: str | None = None) -> None:
        super().__init__(open_store(_with_query(uri, database=database_name,
                                                namespace=namespace, durability=durability)))


class RedisSessionStorage(SessionStorage):
    """Sessions in Redis (or Redis Cluster with ``redis+cluster://``)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 namespace: str | None = None, durability: str | None = None) -> None:
        super().__init__(open_store(_with_query(url, namespace=namespace,
                                                durability=durability)))
