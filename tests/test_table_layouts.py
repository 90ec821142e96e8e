"""Versioned table layouts (SQLite and PostgreSQL): a table made by an older release is
upgraded on open and keeps its rows; processes opening at once run each step once; a table
newer than this release is refused."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kvsessions.kv.postgresql as postgresql_module
import kvsessions.kv.sqlite as sqlite_module
from kvsessions.errors import ConfigError
from kvsessions.kv.base import KVStore
from kvsessions.kv.postgresql import PostgreSQLStore
from kvsessions.kv.sqlite import SQLiteStore
from kvsessions.kv.table_layouts import TableLayouts
from tests.backends.postgresql import drop_tables

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

#: The table as releases before versioned layouts made it (written out, not imported).
SQLITE_BEFORE = [
    'CREATE TABLE IF NOT EXISTS "{ns}" (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL, '
    "expires_at REAL) WITHOUT ROWID",
    'CREATE INDEX IF NOT EXISTS "{ns}__expires" ON "{ns}" (expires_at) '
    "WHERE expires_at IS NOT NULL",
]
POSTGRES_BEFORE = [
    'CREATE TABLE IF NOT EXISTS "{ns}" (key text COLLATE "C" PRIMARY KEY, value jsonb NOT NULL, '
    "raw bytea, expires_at timestamptz)",
]
ROWS = {"a": {"n": 1}, "b:1": {"n": 2}, "c": {"text": "x" * 100}}


@pytest.fixture
def namespace() -> Iterator[str]:
    name = "lay_" + uuid.uuid4().hex[:12]
    yield name
    asyncio.run(drop_tables(POSTGRES_URL, {name, f"{name}_probe"}))


async def _postgres(sql: str, *args: Any) -> Any:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


class SQLiteSide:
    name = "sqlite"
    module: Any = sqlite_module

    def __init__(self, folder: Path, namespace: str) -> None:
        self.path = folder / "layouts.db"
        self.namespace = namespace

    def store(self) -> KVStore:
        return SQLiteStore(self.path, namespace=self.namespace)

    async def execute(self, sql: str, *args: Any) -> list[Any]:
        with sqlite3.connect(self.path) as db:
            return db.execute(sql.replace("$1", "?").replace("$2", "?"), args).fetchall()

    async def make_old_table(self) -> None:
        for sql in SQLITE_BEFORE:
            await self.execute(sql.format(ns=self.namespace))
        for key, value in ROWS.items():
            await self.execute(f'INSERT INTO "{self.namespace}" VALUES ($1, $2, NULL)',
                               key, orjson.dumps(value))

    def probe_step(self) -> list[str]:
        return [f'INSERT INTO "{self.namespace}_probe" VALUES (1)']


class PostgresSide(SQLiteSide):
    name = "postgresql"
    module = postgresql_module

    def store(self) -> KVStore:
        return PostgreSQLStore(POSTGRES_URL, namespace=self.namespace, max_pool_size=2)

    async def execute(self, sql: str, *args: Any) -> list[Any]:
        return [tuple(row) for row in await _postgres(sql, *args)]

    async def make_old_table(self) -> None:
        await self.execute(POSTGRES_BEFORE[0].format(ns=self.namespace))
        for key, value in ROWS.items():
            await self.execute(f'INSERT INTO "{self.namespace}" VALUES ($1, $2::text::jsonb)',
                               key, orjson.dumps(value).decode())


@pytest.fixture(params=["sqlite", "postgresql"])
def side(request: Any, tmp_path: Path, namespace: str) -> SQLiteSide:
    return (SQLiteSide if request.param == "sqlite" else PostgresSide)(tmp_path, namespace)


async def stored_version(side: SQLiteSide) -> int | None:
    rows = await side.execute('SELECT version FROM "kvsessions-layouts" WHERE name = $1',
                              side.namespace)
    return rows[0][0] if rows else None


async def test_table_made_before_layout_versions_is_upgraded_and_keeps_rows(
        side: SQLiteSide) -> None:
    await side.make_old_table()
    async with side.store() as store:
        assert {key: orjson.loads(value) async for key, value in store.scan()} == ROWS
        await store.put("d", orjson.dumps({"new": True}))
    assert await stored_version(side) == side.module.LAYOUTS.current == 1
    async with side.store() as store:  # opening again changes nothing
        assert await store.keys() == ["a", "b:1", "c", "d"]
    assert await stored_version(side) == 1


async def test_a_newer_layout_is_refused(side: SQLiteSide) -> None:
    async with side.store() as store:
        await store.put("k", b"{}")
    await side.execute('UPDATE "kvsessions-layouts" SET version = 99 WHERE name = $1',
                       side.namespace)
    with pytest.raises(ConfigError, match="layout version 99, newer"):
        await side.store().open()


def _open_with_probe_step(side: SQLiteSide, start: float, queue: Any) -> None:
    """A child: this release's steps plus one that is not idempotent (an insert)."""
    layouts = side.module.LAYOUTS
    side.module.LAYOUTS = TableLayouts([*layouts.steps, side.probe_step()],
                                       dialect=layouts.dialect)

    async def work() -> list[str]:
        async with side.store() as store:
            await store.put(f"opened-by-{os.getpid()}", b"{}")
            return await store.keys()

    time.sleep(max(0.0, start - time.time()))
    try:
        queue.put(asyncio.run(work()))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(f"{type(exc).__name__}: {exc}")


async def test_processes_opening_at_once_run_each_step_once(side: SQLiteSide) -> None:
    await side.make_old_table()
    await side.execute(f'CREATE TABLE "{side.namespace}_probe" (n integer)')
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start = time.time() + 1.0
    processes = [context.Process(target=_open_with_probe_step, args=(side, start, queue))
                 for _ in range(6)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert all(isinstance(result, list) for result in results), results
    assert await side.execute(f'SELECT count(*) FROM "{side.namespace}_probe"') == [(1,)]
    assert await stored_version(side) == side.module.LAYOUTS.current + 1
    keys = {row[0] for row in await side.execute(f'SELECT key FROM "{side.namespace}"')}
    assert set(ROWS) <= keys and len(keys) == len(ROWS) + 6  # one key for every child


async def test_a_dropped_table_is_made_again(side: SQLiteSide) -> None:
    async with side.store() as store:
        await store.put("k", b"{}")
    await side.execute(f'DROP TABLE "{side.namespace}"')
    assert await stored_version(side) == 1  # the row outlives the table
    async with side.store() as store:
        assert await store.keys() == []
        await store.put("k", b"{}")
        assert await store.keys() == ["k"]


async def test_a_role_that_may_not_create_tables_opens_a_table_made_before_versions(
        tmp_path: Path, namespace: str) -> None:
    """PostgreSQL 15 gives no CREATE on schema public by default: an application role with
    rights on its table only must keep opening a table made before layouts were versioned."""
    side = PostgresSide(tmp_path, namespace)
    await side.make_old_table()
    role = f"kvs_app_{uuid.uuid4().hex[:8]}"
    await side.execute(f"CREATE ROLE {role} LOGIN")
    try:
        await side.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await side.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{namespace}" TO {role}')
        url = POSTGRES_URL.replace("postgres@", f"{role}@")
        async with PostgreSQLStore(url, namespace=namespace, max_pool_size=2) as store:
            assert {key: orjson.loads(value) async for key, value in store.scan()} == ROWS
            await store.put("d", b"{}")
            assert await store.get("d") == b"{}"
    finally:
        await side.execute(f'REVOKE ALL ON "{namespace}" FROM {role}')
        await side.execute(f"DROP ROLE {role}")
