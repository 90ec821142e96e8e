"""Commands that read a store never create or change anything (issue 15, items 3 and 6): a store
that does not exist, a folder given as a SQLite file, and another application's SQLite file
are each one error line, and afterwards the disk holds exactly what it held before."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.backends.postgresql import POSTGRES_URL
from tests.cli import one_error_line, run_kvsessions
from tests.mongo_server import mongodb_url

#: Each read-only command with the arguments that follow its store (``{out}``: a new file).
READERS = [
    ("ls", []), ("show", ["some-session-id"]), ("stats", []), ("validate", []),
    ("export", ["{out}/dump.jsonl"]), ("backup", ["{out}/backups"]), ("upgrade", []),
    ("cleanup", []),
]


def _argv(command: str, store: str, rest: list[str], out: Path) -> list[str]:
    return [command, store, *(arg.format(out=out) for arg in rest)]


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content: what "nothing changed" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(("command", "rest"), READERS)
@pytest.mark.parametrize("store", ["sqlite:///data/missing.db", "data/missing.db",
                                   "file:///{work}/data/folder-store"])
def test_a_store_that_does_not_exist_is_one_line_and_nothing_is_made(
    tmp_path: Path, command: str, rest: list[str], store: str
) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    store = store.format(work=work)

    line = one_error_line(run_kvsessions(*_argv(command, store, rest, out), cwd=work), command)

    assert "no kvsessions store at" in line and "does not exist" in line
    assert _tree(tmp_path) == {"out": b"<dir>", "work": b"<dir>"}


def test_verify_and_migrate_look_at_the_stores_they_only_read(tmp_path: Path) -> None:
    missing, other = "sqlite:///missing.db", "sqlite:///other.db"
    for argv in (["verify", missing, other], ["verify", other, missing],
                 ["migrate", missing, other]):
        line = one_error_line(run_kvsessions(*argv, cwd=tmp_path), argv[0])
        assert "no kvsessions store at sqlite:///" in line and "does not exist" in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def foreign_database(tmp_path: Path) -> Path:
    """Another application's SQLite file: its own table, its own rows, its journal mode."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('ada'), ('grace')")
    return path


@pytest.mark.parametrize(("command", "rest"), [*READERS, ("verify", ["sqlite:///x.db"]),
                                               ("migrate", ["sqlite:///x.db"])])
def test_another_applications_sqlite_file_is_left_as_it_was(
    tmp_path: Path, foreign_database: Path, command: str, rest: list[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = hashlib.sha256(foreign_database.read_bytes()).hexdigest()

    done = run_kvsessions(*_argv(command, "app.db", rest, out), cwd=tmp_path)

    line = one_error_line(done, command)
    assert "has no table 'kvsessions'" in line and "'users'" in line
    assert hashlib.sha256(foreign_database.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "out"]
    assert list(out.iterdir()) == []


def test_a_folder_given_as_a_sqlite_file_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "srv" / "app"
    folder.mkdir(parents=True)
    line = one_error_line(run_kvsessions("ls", f"sqlite:///{folder}"), "ls")
    assert f"{folder} is a folder" in line
    assert list(folder.iterdir()) == []


#: Seed 003's own example, failing before it closes its storage.
NEVER_CLOSED = """
import asyncio, sys
from kvsessions import SessionManager, SQLiteSessionStorage

async def main():
    storage = SQLiteSessionStorage(sys.argv[1])
    await storage.initialize()
    manager = SessionManager(storage)
    session = await manager.create_session("gemini-2.5-flash")
    session.add_message("user", "hello")
    await manager.auto_save(session)
    raise RuntimeError("the application failed before closing its storage")

asyncio.run(main())
"""


def test_a_process_that_never_closes_its_sqlite_storage_exits(tmp_path: Path) -> None:
    try:
        done = subprocess.run([sys.executable, "-c", NEVER_CLOSED, str(tmp_path / "s.db")],
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the process never exited: the SQLite thread kept it alive")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "RuntimeError: the application failed before closing its storage")
    listing = run_kvsessions("ls", f"sqlite:///{tmp_path}/s.db")
    assert "1 session in" in listing.stdout  # what it saved before failing is there


@pytest.mark.parametrize("command", ["ls", "stats", "validate", "export"])
def test_a_server_store_that_does_not_exist_is_not_created(tmp_path: Path, command: str) -> None:
    namespace = "absent_" + uuid.uuid4().hex[:12]
    for url, exists in ((f"{POSTGRES_URL}?namespace={namespace}", _postgres_table_exists),
                        (_mongodb_url(namespace), _mongodb_collection_exists)):
        argv = [command, url, *([str(tmp_path / "dump.jsonl")] if command == "export" else [])]
        line = one_error_line(run_kvsessions(*argv), command)
        assert "no kvsessions store at" in line and namespace in line
        assert not exists(namespace)
    assert list(tmp_path.iterdir()) == []


def _mongodb_url(namespace: str) -> str:
    parts = urlsplit(mongodb_url())
    query = f"{parts.query}&namespace={namespace}" if parts.query else f"namespace={namespace}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _postgres_table_exists(name: str) -> bool:
    async def look() -> bool:
        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            return bool(await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", name))
        finally:
            await connection.close()
    return asyncio.run(look())


def _mongodb_collection_exists(name: str) -> bool:
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongodb_url())
    try:
        return name in client.get_default_database("kvsessions").list_collection_names()
    finally:
        client.close()
