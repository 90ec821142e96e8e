"""The SQLite store on its own thread: opening and reading never wait for another connection's
write transaction, a folder given as the database is one clean error, a process that never
closes its store still exits, and writes queued together share one commit while each keeps its
own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest

from kvsessions.errors import ConfigError
from kvsessions.kv.sqlite import SQLiteStore
from kvsessions.kv.sqlite_worker import Discard, SQLiteWorker

#: Holds a write transaction (with an uncommitted row) until a line arrives on stdin.
WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO app VALUES ('uncommitted', x'7b7d', NULL)")
print("holding", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@pytest.fixture
def held_write_lock(tmp_path: Path) -> Iterator[Path]:
    """A database whose table is set up, and another process in BEGIN IMMEDIATE on it."""
    path = tmp_path / "busy.db"

    async def set_up() -> None:
        async with SQLiteStore(path, namespace="app") as store:
            await store.put("a", orjson.dumps({"n": 1}))
            await store.put("gone", orjson.dumps({}), ttl=0.01)  # expired: a purge is due

    asyncio.run(set_up())
    time.sleep(0.02)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "holding\n"
        yield path
    finally:
        writer.communicate("done\n", timeout=30)


async def test_open_and_reads_do_not_wait_for_a_writer(held_write_lock: Path) -> None:
    # busy_timeout=500: were opening to need the write lock, it would fail "database is
    # locked" (the writer holds it until this test ends), not merely be slow.
    async with SQLiteStore(held_write_lock, namespace="app", busy_timeout=500) as store:
        assert orjson.loads(await store.get("a") or b"") == {"n": 1}
        assert await store.get("uncommitted") is None
        assert await store.get_many(["a", "uncommitted"]) == [orjson.dumps({"n": 1}), None]
        assert await store.keys() == ["a"]  # expired rows stay invisible, purged or not
        assert [key async for key, _ in store.scan(reverse=True)] == ["a"]


async def test_a_folder_as_the_database_is_one_clean_error(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        await SQLiteStore(tmp_path).open()
    assert capfd.readouterr().err == ""  # no thread traceback


def test_a_process_that_never_closes_its_store_exits(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from kvsessions.kv.sqlite import SQLiteStore\n"
        "async def main():\n"
        "    store = await SQLiteStore(sys.argv[1]).open()\n"
        "    await store.put('k', b'{}')\n"
        "    print('written', flush=True)\n"
        "asyncio.run(main())\n")
    try:
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "open.db")],
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: the store's thread kept it alive")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "written\n"


async def queued_behind_a_busy_thread(
        store: SQLiteStore,
        calls: list[Callable[[], Awaitable[object]]]) -> list[object]:
    """Start ``calls`` while the store's thread is kept busy, so that they all wait in its
    queue when it is free again; their outcomes (an exception as it was raised)."""
    worker = store._conn
    assert worker is not None
    release = threading.Event()
    blocked = asyncio.ensure_future(worker.run(lambda _: release.wait(30)))
    tasks = [asyncio.ensure_future(call()) for call in calls]
    await asyncio.sleep(0.05)  # every call has queued its job (none can have run)
    release.set()
    await blocked
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def committed(path: Path, key: str) -> bool:
    """Whether another connection sees ``key``: committed, not merely written."""
    with sqlite3.connect(path) as other:
        return other.execute("SELECT 1 FROM app WHERE key = ?", (key,)).fetchone() is not None


async def test_writes_queued_together_share_one_commit(tmp_path: Path) -> None:
    path = tmp_path / "group.db"
    async with SQLiteStore(path, namespace="app") as store:
        assert store._conn is not None
        seen: list[bool] = []

        def look(db: sqlite3.Connection) -> None:
            seen.append(committed(path, "first"))  # uncommitted: still in the shared one

        outcomes = await queued_behind_a_busy_thread(store, [
            lambda: store.put("first", b"{}"),
            lambda: store._conn.write(look),  # type: ignore[union-attr]
            lambda: store.put("last", b"{}")])
        assert outcomes == [None, None, None]
        assert seen == [False]
        assert committed(path, "first") and committed(path, "last")


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "alone.db"

    def fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO app VALUES ('failed', x'7b7d', NULL)")
        raise RuntimeError("this job only")

    def discard(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO app VALUES ('discarded', x'7b7d', NULL)")
        raise Discard("undone")

    def lose_transaction(db: sqlite3.Connection) -> None:
        db.execute("ROLLBACK")  # as SQLite does on some errors (disk full, I/O)
        raise sqlite3.OperationalError("the whole transaction is gone")

    async with SQLiteStore(path, namespace="app") as store:
        worker = store._conn
        assert worker is not None
        outcomes = await queued_behind_a_busy_thread(store, [
            lambda: store.put("a", b"{}"),
            lambda: worker.write(fail),
            lambda: store.put("b", b"{}"),
            lambda: worker.write(discard),
            lambda: store.put("c", b"{}"),
            lambda: worker.write(lose_transaction),
            lambda: store.put("d", b"{}")])
        assert outcomes[0::2] == [None, None, None, None]
        assert isinstance(outcomes[1], RuntimeError) and str(outcomes[1]) == "this job only"
        assert outcomes[3] == "undone"
        assert isinstance(outcomes[5], sqlite3.OperationalError)
        assert await store.keys() == ["a", "b", "c", "d"]
        assert all(committed(path, key) for key in "abcd")


async def test_a_failed_commit_fails_every_write_in_it(tmp_path: Path) -> None:
    path = tmp_path / "commit.db"
    worker = SQLiteWorker("test-commit")
    await worker.start(lambda: sqlite3.connect(path, isolation_level=None))
    try:
        await worker.run(lambda db: db.executescript(
            "PRAGMA foreign_keys = ON; CREATE TABLE parent (id INTEGER PRIMARY KEY); "
            "CREATE TABLE child (parent INTEGER REFERENCES parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"))
        release = threading.Event()
        blocked = asyncio.ensure_future(worker.run(lambda _: release.wait(30)))
        fine = asyncio.ensure_future(worker.write(
            lambda db: db.execute("INSERT INTO parent VALUES (1)").rowcount))
        orphan = asyncio.ensure_future(worker.write(  # refused only at COMMIT
            lambda db: db.execute("INSERT INTO child VALUES (2)").rowcount))
        await asyncio.sleep(0.05)
        release.set()
        await blocked
        outcomes = await asyncio.gather(fine, orphan, return_exceptions=True)
        assert all(isinstance(outcome, sqlite3.IntegrityError) for outcome in outcomes)
        assert await worker.execute_fetchall("SELECT count(*) FROM parent") == [(0,)]
        assert await worker.write(lambda db: db.execute(
            "INSERT INTO parent VALUES (1)").rowcount) == 1  # the connection still works
    finally:
        await worker.stop()


async def test_concurrent_batches_with_allocations_traced(tmp_path: Path) -> None:
    """tracemalloc makes the loop's thread collect garbage at other moments: a cursor a write
    job returned, freed there mid-transaction, broke the thread's next statement ("bad
    parameter or other API misuse"; a parallel migration's memory test found it)."""
    import tracemalloc

    async with SQLiteStore(tmp_path / "traced.db", namespace="kv") as store:
        async def writer(number: int) -> None:
            for batch in range(30):
                await store.put_many([(f"k:{number}:{batch}:{i:03d}",
                                       orjson.dumps({"i": i, "t": "x" * 300}))
                                      for i in range(200)])
        tracemalloc.start()
        try:
            await asyncio.gather(*(writer(number) for number in range(4)))
        finally:
            tracemalloc.stop()
        assert len(await store.keys("k:")) == 4 * 30 * 200
