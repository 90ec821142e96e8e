"""The SQLite store on its own thread: opening and reading never wait for another connection's
write transaction, a folder given as the database is one clean error, and a process that never
closes its store still exits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from kvsessions.errors import ConfigError
from kvsessions.kv.sqlite import SQLiteStore

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
