"""Issue 13, item 6: ``durability=`` on the ``*SessionStorage`` conveniences reaches the store
exactly as the URL option does (checked by the same code, with the same errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsessions.errors import ConfigError
from kvsessions.sessions.conveniences import (
    FileSessionStorage,
    MemorySessionStorage,
    PostgreSQLSessionStorage,
    RedisSessionStorage,
    SQLiteSessionStorage,
)
from tests.backends.postgresql import POSTGRES_URL
from tests.backends.redis import REDIS_URL


async def test_sqlite_strict_fsyncs_every_commit(tmp_path: Path) -> None:
    async with SQLiteSessionStorage(tmp_path / "s.db", durability="strict") as storage:
        store = storage._raw
        assert store.durability == "strict"  # type: ignore[attr-defined]
        synchronous = await store._conn.execute_fetchall(  # type: ignore[attr-defined]
            "PRAGMA synchronous")
        assert synchronous == [(2,)]  # FULL
    async with SQLiteSessionStorage(tmp_path / "s.db") as storage:
        assert storage._raw.durability == "normal"  # type: ignore[attr-defined]


def test_every_convenience_takes_durability(tmp_path: Path) -> None:
    file = FileSessionStorage(tmp_path / "files", durability="strict")
    postgresql = PostgreSQLSessionStorage(POSTGRES_URL, durability="strict")
    redis = RedisSessionStorage(REDIS_URL, durability="strict")
    MemorySessionStorage(durability="normal")
    assert file._raw.durability == "strict"  # type: ignore[attr-defined]
    assert postgresql._raw.durability == "strict"  # type: ignore[attr-defined]
    assert redis._raw._durability == "strict"  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", [
    lambda path: SQLiteSessionStorage(path / "s.db", durability="paranoid"),
    lambda path: FileSessionStorage(path, durability="fast"),
    lambda path: MemorySessionStorage(durability="strict"),  # nothing in memory is durable
])
def test_a_bad_durability_is_one_clear_error(tmp_path: Path, make: object) -> None:
    with pytest.raises(ConfigError, match="durability"):
        make(tmp_path)  # type: ignore[operator]
