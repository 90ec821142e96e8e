"""What only the SQLite store has to get right: pragmas, options, several processes, tables."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.errors import ConfigError, KVSessionsError, StoreError
from kvsessions.kv.registry import open_store
from kvsessions.kv.sqlite import SQLiteStore


def dumps(document: object) -> bytes:
    return orjson.dumps(document)


async def pragma(store: SQLiteStore, name: str) -> Any:
    rows = await store._conn.execute_fetchall(f"PRAGMA {name}")
    return next(iter(rows))[0]


async def test_wal_and_synchronous_normal_by_default(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "db.sqlite") as store:
        assert await pragma(store, "journal_mode") == "wal"
        assert await pragma(store, "synchronous") == 1  # NORMAL
        assert await pragma(store, "busy_timeout") == 30_000
    with sqlite3.connect(tmp_path / "db.sqlite") as other:  # WAL is kept in the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_durability_strict_gives_synchronous_full(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite?durability=strict&busy_timeout=1234")
    assert isinstance(store, SQLiteStore)
    async with store:
        assert await pragma(store, "synchronous") == 2  # FULL
        assert await pragma(store, "busy_timeout") == 1234
        await store.put("k", dumps({}))
        assert await store.get("k") == dumps({})


def test_url_options_and_bad_urls(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db?namespace=app&batch_size=7")
    assert isinstance(store, SQLiteStore)
    assert (store.namespace, store.scan_batch_size, store.path) == (
        "app", 7, str(tmp_path / "x.db"))
    assert "SQLiteStore" in repr(store) and "app" in repr(store)
    for bad in (f"sqlite:///{tmp_path}/x.db?durability=sometimes",
                f"sqlite:///{tmp_path}/x.db?busy_timeout=soon",
                f"sqlite:///{tmp_path}/x.db?batch_size=0",
                f"sqlite:///{tmp_path}/x.db?colour=red",
                f"sqlite:///{tmp_path}/x.db?namespace=a;drop",
                "sqlite://host/x.db", "sqlite:///"):
        with pytest.raises(ConfigError):
            open_store(bad)


async def test_in_memory_database(tmp_path: Path) -> None:
    async with open_store("sqlite:///:memory:?namespace=mem") as store:
        await store.put_many([("b", dumps({"n": 2})), ("a", dumps({"n": 1}))])
        assert await store.keys() == ["a", "b"]
    assert not list(tmp_path.iterdir())


async def test_two_namespaces_are_two_tables_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteStore(path, namespace="one") as one, \
            SQLiteStore(path, namespace="two") as two:
        await one.put("k", dumps({"ns": 1}))
        await two.put("k", dumps({"ns": 2}))
        assert orjson.loads(await one.get("k") or b"") == {"ns": 1}
        assert orjson.loads(await two.get("k") or b"") == {"ns": 2}
        assert await one.delete("k") is True
        assert await two.get("k") is not None
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"one", "two", "kvsessions-layouts"}
        assert db.execute("SELECT count(*) FROM two").fetchone()[0] == 1


def _writer(path: str, worker: int, start: float, queue: Any) -> None:
    async def work() -> int:
        async with SQLiteStore(path, namespace="shared") as store:
            await store.put_many([(f"w{worker}:{i:03d}", dumps({"i": i})) for i in range(50)])
            for i in range(30):
                await store.put(f"w{worker}:single:{i:02d}", dumps({"i": i}))
            won = await store.put_if_absent("race", dumps({"worker": worker}))
            await store.delete_many([f"w{worker}:{i:03d}" for i in range(0, 50, 2)])
            return int(won)

    time.sleep(max(0.0, start - time.time()))
    try:
        queue.put(asyncio.run(work()))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(f"{type(exc).__name__}: {exc}")


async def test_eight_processes_open_a_fresh_file_and_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start = time.time() + 0.5
    processes = [context.Process(target=_writer, args=(str(path), w, start, queue))
                 for w in range(8)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert all(isinstance(r, int) for r in results), results  # no "database is locked"
    assert sum(results) == 1
    async with SQLiteStore(path, namespace="shared") as store:
        keys = await store.keys()
        assert len(keys) == 8 * (25 + 30) + 1
        assert len(await store.keys("w3:")) == 55


async def test_expired_rows_are_purged_on_open(tmp_path: Path) -> None:
    path = tmp_path / "ttl.db"
    async with SQLiteStore(path, namespace="t") as store:
        await store.put("short", dumps({}), ttl=0.1)
        await store.put("long", dumps({}))
    await asyncio.sleep(0.2)
    async with SQLiteStore(path, namespace="t") as store:
        assert await store.keys() == ["long"]
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT key FROM t")] == ["long"]


async def test_a_value_not_written_as_bytes_raises(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    async with SQLiteStore(path, namespace="t") as store:
        await store.put("k", dumps({}))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE t SET value = '{\"text\": 1}'")
    async with SQLiteStore(path, namespace="t") as store:
        for attempt in (store.get("k"), store.get_many(["k"]), store.keys(),
                        store.get_and_last("k", "x"), store.get_and_last("x", "k")):
            with pytest.raises(StoreError, match="not bytes"):
                await attempt


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database" * 200)
    with pytest.raises(KVSessionsError) as caught:
        await SQLiteStore(path).open()
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert "garbage.db" in str(caught.value)


async def test_put_many_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "tx.db"
    async with SQLiteStore(path, namespace="t") as store:
        await store.put("keep", dumps({"v": 1}))
        with sqlite3.connect(path) as db:  # make the 3rd row of the batch fail inside SQLite
            db.execute("CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.key = 'c' "
                       "BEGIN SELECT RAISE(ABORT, 'refused'); END")
        with pytest.raises(KVSessionsError, match="refused"):
            await store.put_many([("a", dumps({})), ("keep", dumps({"v": 2})), ("c", dumps({}))])
        assert await store.keys() == ["keep"]
        assert orjson.loads(await store.get("keep") or b"") == {"v": 1}
        await store.put("z", dumps({}))  # the connection is usable afterwards
        assert await store.keys() == ["keep", "z"]


async def test_big_batches_cross_the_bound_variable_limit(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "big.db") as store:
        keys = [f"k{i:05d}" for i in range(1500)]
        await store.put_many([(k, dumps({})) for k in keys])
        values = await store.get_many([*keys, "missing"])
        assert values[-1] is None and all(v == b"{}" for v in values[:-1])
        assert await store.delete_many([*keys[:1200], "missing"]) == 1200
        assert await store.keys() == keys[1200:]


async def test_busy_while_opening_is_retried(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite may refuse the WAL switch or the schema read with SQLITE_BUSY at once, without
    waiting on busy_timeout; opening must retry instead of failing."""
    real_prepare = SQLiteStore._prepare
    failures = [0]

    def flaky_prepare(self: SQLiteStore, db: sqlite3.Connection) -> None:
        if failures[0] < 3:
            failures[0] += 1
            raise sqlite3.OperationalError("database is locked")
        real_prepare(self, db)

    monkeypatch.setattr(SQLiteStore, "_prepare", flaky_prepare)
    async with SQLiteStore(tmp_path / "busy.db") as store:
        await store.put("k", dumps({}))
    assert failures[0] == 3
    failures[0] = -10**6  # always busy: gives up after busy_timeout, as "unavailable"
    with pytest.raises(KVSessionsError, match="locked"):
        await SQLiteStore(tmp_path / "busy.db", busy_timeout=50).open()
