"""SQLite writes on the event loop (``kvsessions.kv.sqlite_loop``): they run there only while
the store's thread is idle and only at ``durability=normal``; a write that finds the database
locked goes to the thread and waits there; writes on the loop and on the thread at once, from
threads and processes, lose nothing; the WAL is checkpointed by the thread and stays bounded."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.kv.sqlite import LOOP_WRITE_BYTES, SQLiteStore
from kvsessions.kv.sqlite_loop import ELSEWHERE, WAL_PAGES
from kvsessions.kv.sqlite_worker import Discard, SQLiteWorker
from kvsessions.kv.text_search import TextIndex

#: Holds the write lock (BEGIN IMMEDIATE) until a line arrives on stdin.
LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""

#: Another process incrementing the same counter through its own store.
INCREMENTER = """
import asyncio, sys, orjson
from kvsessions.kv.sqlite import LOOP_WRITE_BYTES, SQLiteStore

async def main(path, times):
    async with SQLiteStore(path, namespace="app") as store:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(times):
            await store.put(f"process:{i}", b"{}")
            while True:
                current = await store.get("counter")
                count = orjson.loads(current)["n"]
                if await store.compare_and_set("counter", current,
                                               orjson.dumps({"n": count + 1})):
                    break

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@dataclass
class Paths:
    """Counts of where a store's writes ran."""

    thread_writes: int = 0
    loop_writes: int = 0
    checkpoints: list[str] = field(default_factory=list)


def watch(store: SQLiteStore) -> Paths:
    """Count the store's writes on its thread and on the loop, and its checkpoint requests."""
    seen = Paths()
    worker, here = store._conn, store._loop_connection
    assert worker is not None and here is not None
    write, loop_write, background = worker.write, here.write, worker.run_in_background

    async def thread_write(*args: Any, **kwargs: Any) -> Any:
        seen.thread_writes += 1
        return await write(*args, **kwargs)

    def counted_loop_write(*args: Any, **kwargs: Any) -> Any:
        result = loop_write(*args, **kwargs)
        if result is not ELSEWHERE:
            seen.loop_writes += 1
        return result

    def in_background(function: Any, what: str) -> None:
        seen.checkpoints.append(what)
        background(function, what)

    worker.write = thread_write  # type: ignore[method-assign]
    here.write = counted_loop_write  # type: ignore[method-assign]
    worker.run_in_background = in_background  # type: ignore[method-assign]
    return seen


def v(n: object) -> bytes:
    """A document (values are JSON objects)."""
    return orjson.dumps({"v": n})


def stored(path: Path) -> dict[str, bytes]:
    """What another connection sees: committed rows only."""
    with sqlite3.connect(path) as other:
        return dict(other.execute("SELECT key, value FROM app").fetchall())


async def test_every_kind_of_write_runs_on_the_loop_when_the_thread_is_idle(
        tmp_path: Path) -> None:
    path = tmp_path / "loop.db"
    async with SQLiteStore(path, namespace="app") as store:
        paths = watch(store)
        index = TextIndex("note:", "text")
        await store.put("note:1", orjson.dumps({"text": "apples"}))
        assert [hit.key for hit in await store.search_text(index, "apples")] == ["note:1"]
        await store.put("a", v(1))
        await store.put("t", v(1), ttl=60)
        await store.put_many([("b", v(2)), ("c", v(3)), ("note:2", orjson.dumps(
            {"text": "pears"}))])
        assert await store.put_if_absent("d", v(4))
        assert not await store.put_if_absent("d", v(5))
        assert await store.delete("c")
        assert await store.compare_and_set("a", v(1), v(11))
        assert not await store.compare_and_set("a", v(1), v(12))
        assert await store.compare_and_set_with(
            "a", v(11), v(111), create=[("e", v(5))], put=[("f", v(6))], delete=["d"],
            swap=[("b", v(2), v(22))])
        assert not await store.compare_and_set_with(  # "b" no longer holds v(2): no change
            "a", v(111), v(1111), create=[("g", v(7))], swap=[("b", v(2), None)])
        assert await store.delete_many(["e", "f", "missing"]) == 2
        assert [hit.key for hit in await store.search_text(index, "pears")] == ["note:2"]
        assert paths.thread_writes == 0
        assert paths.loop_writes == 12
        assert stored(path) == {
            "a": v(111), "b": v(22), "t": v(1), "note:1": orjson.dumps({"text": "apples"}),
            "note:2": orjson.dumps({"text": "pears"})}


async def test_writes_go_to_the_thread_while_other_tasks_wait_to_run(tmp_path: Path) -> None:
    """Concurrent writers keep the thread: it runs SQLite on the other core while the loop
    runs the next task, and their writes share commits; a writer alone is back on the loop."""
    path = tmp_path / "busy.db"
    async with SQLiteStore(path, namespace="app") as store:
        paths = watch(store)
        await asyncio.gather(*(store.put(f"k{i:02d}", v(i)) for i in range(16)))
        assert (paths.loop_writes, paths.thread_writes) == (0, 16)
        await store.put("alone", v(0))
        assert (paths.loop_writes, paths.thread_writes) == (1, 16)
        assert stored(path) == {"alone": v(0), **{f"k{i:02d}": v(i) for i in range(16)}}


async def test_a_write_job_on_the_loop_keeps_the_threads_semantics(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with SQLiteStore(path, namespace="app") as store:
        paths = watch(store)

        def discard(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO app VALUES ('discarded', x'7b7d', NULL)")
            raise Discard("undone")

        def fail(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO app VALUES ('failed', x'7b7d', NULL)")
            raise RuntimeError("this job only")

        def cursor(db: sqlite3.Connection) -> sqlite3.Cursor:
            return db.execute("INSERT INTO app VALUES ('kept', x'7b7d', NULL)")

        assert await store._write(discard, size=0) == "undone"
        with pytest.raises(RuntimeError, match="this job only"):
            await store._write(fail, size=0)
        assert await store._write(cursor, size=0) is None  # closed, as the thread closes them
        assert paths.thread_writes == 0
        assert stored(path) == {"kept": b"{}"}
        assert store._loop_connection is not None and not store._loop_connection._db.in_transaction


async def test_purges_and_large_writes_run_on_the_thread(tmp_path: Path) -> None:
    """A write whose cost is unknown (a purge of expired rows comes with it) or large would
    hold the event loop for long; its hop to the thread is a small part of its cost."""
    path = tmp_path / "purge.db"
    async with SQLiteStore(path, namespace="app") as store:
        paths = watch(store)
        await store.put("short", v(1), ttl=0.01)
        time.sleep(0.05)
        store._next_purge = 0.0  # a purge is due
        await store.put("long", v(2), ttl=60)
        assert set(stored(path)) == {"long"}  # the expired row is gone, not only hidden
        assert (paths.loop_writes, paths.thread_writes) == (1, 1)
        await store.put("other", v(3), ttl=60)  # no purge due
        large = v("x" * LOOP_WRITE_BYTES)
        await store.put("large", large)
        await store.put_many([("many", v(4)), ("large", large)])
        assert (paths.loop_writes, paths.thread_writes) == (2, 3)
        assert stored(path)["large"] == large


async def test_strict_durability_never_writes_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "strict.db"
    async with SQLiteStore(path, namespace="app", durability="strict") as store:
        paths = watch(store)
        await store.put("a", v(1))
        await store.put_many([("b", v(2)), ("c", v(3))])
        assert await store.compare_and_set("a", v(1), v(11))
        assert await store.delete("c")
        assert paths.thread_writes == 4 and paths.loop_writes == 0
        assert await store.get("a") == v(11)  # reads still run on the loop's connection
        assert store._loop_connection is not None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._loop_connection._db.execute("INSERT INTO app VALUES ('x', x'7b7d', NULL)")
    assert stored(path) == {"a": v(11), "b": v(2)}


async def test_a_write_that_runs_while_the_thread_is_busy_waits_its_turn(
        tmp_path: Path) -> None:
    """A write queued on the thread is never overtaken by a later write on the loop, the
    write of a cancelled caller included."""
    async with SQLiteStore(tmp_path / "order.db", namespace="app") as store:
        paths = watch(store)
        worker = store._conn
        assert worker is not None
        release = threading.Event()
        blocked = asyncio.ensure_future(worker.run(lambda _: release.wait(30)))
        await asyncio.sleep(0.01)
        first = asyncio.ensure_future(store.put("k", v("old")))
        await asyncio.sleep(0.01)
        first.cancel()  # its job stays queued on the thread
        later = asyncio.ensure_future(store.put("k", v("new")))
        await asyncio.sleep(0.01)
        release.set()
        await blocked
        await later
        assert await store.get("k") == v("new")
        assert paths.thread_writes == 2 and paths.loop_writes == 0
        await store.put("k", v("newer"))  # the thread is idle again
        assert paths.loop_writes == 1


@pytest.fixture
def locker(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A database whose table is set up, and another process holding its write lock until
    a line is written to its stdin."""
    path = tmp_path / "locked.db"

    async def set_up() -> None:
        async with SQLiteStore(path, namespace="app") as store:
            await store.put("a", v(1))

    asyncio.run(set_up())
    process = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == "holding\n"
        yield path, process
    finally:
        if process.poll() is None:
            process.communicate("done\n", timeout=30)


async def test_a_locked_database_sends_the_write_to_the_thread_which_waits(
        locker: tuple[Path, subprocess.Popen[str]]) -> None:
    path, process = locker
    async with SQLiteStore(path, namespace="app") as store:
        paths = watch(store)
        writes = [asyncio.ensure_future(call) for call in (
            store.put("b", v(2)),  # one statement, autocommit
            store.put_many([("c", v(3)), ("d", v(4))]),  # a transaction
            store.compare_and_set_with("a", v(1), v(11), create=[("e", v(5))]))]
        await asyncio.sleep(0.3)
        assert not any(write.done() for write in writes)  # waiting on the thread
        assert paths.thread_writes == 3 and paths.loop_writes == 0
        await asyncio.to_thread(process.communicate, "done\n", 30)
        assert await asyncio.gather(*writes) == [None, None, True]  # no "database is locked"
        assert stored(path) == {"a": v(11), "b": v(2), "c": v(3), "d": v(4), "e": v(5)}
        await store.put("f", v(6))
        assert paths.loop_writes == 1  # the lock is free and the thread idle: the loop again


def test_loop_and_thread_writes_at_once_from_threads_and_processes_lose_nothing(
        tmp_path: Path) -> None:
    """Three event loops in three threads share one store, so at every moment one of them
    may hold the loop's connection while the others' writes go to the thread; two other
    processes write the same file. Every put is there and no increment is lost."""
    path = tmp_path / "shared.db"
    threads, processes, times = 3, 2, 150
    paths = Paths()

    async def set_up() -> SQLiteStore:
        store = await SQLiteStore(path, namespace="app").open()
        await store.put("counter", orjson.dumps({"n": 0}))
        nonlocal paths
        paths = watch(store)
        return store

    store = asyncio.run(set_up())
    try:
        children = [subprocess.Popen([sys.executable, "-c", INCREMENTER, str(path),
                                      str(times)], text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE) for _ in range(processes)]
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"

        async def increment(name: int) -> None:
            for i in range(times):
                await store.put(f"thread:{name}:{i}", b"{}")
                while True:
                    current = await store.get("counter")
                    assert current is not None
                    count = orjson.loads(current)["n"]
                    if await store.compare_and_set("counter", current,
                                                   orjson.dumps({"n": count + 1})):
                        break

        runners = [threading.Thread(target=asyncio.run, args=(increment(name),))
                   for name in range(threads)]
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(timeout=300)
        for child in children:
            assert child.wait(timeout=300) == 0
    finally:
        asyncio.run(store.close())
    rows = stored(path)
    assert orjson.loads(rows["counter"]) == {"n": (threads + processes) * times}
    assert len(rows) == 1 + threads * times + times  # the processes put the same keys
    assert paths.loop_writes > 0 and paths.thread_writes > 0  # both paths were taken


async def test_checkpoints_keep_the_wal_bounded(tmp_path: Path) -> None:
    """Without a checkpoint the WAL would hold a page per put (3,000 pages); SQLite's own
    rule is a checkpoint past 1,000 pages."""
    path = tmp_path / "wal.db"
    wal = Path(f"{path}-wal")
    async with SQLiteStore(path, namespace="app") as store:
        paths = watch(store)
        page = 4096 + 24
        largest = 0
        for i in range(3 * WAL_PAGES):
            await store.put(f"k{i:05d}", orjson.dumps({"text": "x" * 500}))
            largest = max(largest, wal.stat().st_size)
        assert paths.loop_writes > 2 * WAL_PAGES  # mostly on the loop
        assert len(paths.checkpoints) >= 2
        assert largest <= (WAL_PAGES + 50) * page
        assert len(await store.keys()) == 3 * WAL_PAGES


async def test_a_background_job_is_waited_for_by_stop_and_its_error_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker = SQLiteWorker("test-background")
    await worker.start(lambda: sqlite3.connect(tmp_path / "bg.db", isolation_level=None))
    ran: list[str] = []

    def slow(_: object) -> None:
        time.sleep(0.2)
        ran.append("slow")

    def broken(_: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    worker.run_in_background(slow, "wait")
    assert not worker.idle  # writes made elsewhere wait for it
    with caplog.at_level(logging.ERROR, logger="kvsessions.kv.sqlite"):
        worker.run_in_background(broken, "checkpoint")
        await worker.stop()
    assert ran == ["slow"]
    assert "could not checkpoint" in caplog.text and "disk I/O error" in caplog.text
    worker.run_in_background(slow, "after stop")  # queues nothing, raises nothing
