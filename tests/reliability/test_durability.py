"""Durability profiles, checked against real servers (issue 7, point 9).

``durability=strict`` must set each store's safe settings at ``open()`` and refuse a server
that contradicts them, naming the setting; ``durability=normal`` (the default) must be what
docs/durability.md says it is. Servers whose configuration a test changes are private
ones (tests/reliability/private_servers.py), never the shared ones.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as redis_asyncio
from pymongo import WriteConcern, monitoring

from kvsessions.errors import ConfigError
from kvsessions.kv.file import FileStore
from kvsessions.kv.mongodb import MongoDBStore
from kvsessions.kv.postgresql import PostgreSQLStore
from kvsessions.kv.redis import RedisStore
from kvsessions.kv.registry import open_store
from kvsessions.kv.sqlite import SQLiteStore
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.backends.redis import REDIS_URL
from tests.mongo_server import drop_collections, mongodb_url
from tests.reliability.private_servers import PrivatePostgres, PrivateRedis

DOC = Path(__file__).resolve().parents[2] / "docs" / "durability.md"
VALUE = orjson.dumps({"kind": "session", "v": 1, "text": "kept"})


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def store_urls(tmp_path: Path) -> dict[str, str]:
    """One URL per durable store (query options follow with '&')."""
    return {
        "file": f"file://{tmp_path}/files?namespace=dur",
        "sqlite": f"sqlite:///{tmp_path}/dur.sqlite?namespace=dur",
        "postgresql": f"{POSTGRES_URL}?namespace=dur",
        "mongodb": "mongodb://127.0.0.1:1/kvsessions_test?namespace=dur",
        "redis": f"{REDIS_URL}?namespace=dur",
    }


# ------------------------------------------------------------------ the parameter itself


@pytest.mark.parametrize("store", ["file", "sqlite", "postgresql", "mongodb", "redis"])
def test_every_store_takes_the_durability_parameter(store: str, tmp_path: Path) -> None:
    """One URL parameter, one vocabulary, on every durable store (nothing is opened here)."""
    url = store_urls(tmp_path)[store]
    for profile in ("normal", "strict"):
        open_store(f"{url}&durability={profile}")
    with pytest.raises(ConfigError, match="durability"):
        open_store(f"{url}&durability=sometimes")


# ------------------------------------------------------------------ SQLite


async def _pragma(store: SQLiteStore, name: str) -> Any:
    rows = await store._conn.execute_fetchall(f"PRAGMA {name}")
    return next(iter(rows))[0]


async def test_sqlite_profiles_read_back_from_the_connection(tmp_path: Path) -> None:
    """normal: WAL + synchronous=NORMAL (1); strict: WAL + synchronous=FULL (2), read back
    from both of the store's connections."""
    expected = {"normal": 1, "strict": 2}
    for profile, synchronous in expected.items():
        store = open_store(f"sqlite:///{tmp_path}/{profile}.sqlite?durability={profile}")
        assert isinstance(store, SQLiteStore)
        async with store:
            await store.put("k", VALUE)
            assert await _pragma(store, "synchronous") == synchronous, profile
            assert await _pragma(store, "journal_mode") == "wal"
            on_loop = store._loop_connection  # the event loop's connection writes too
            assert on_loop is not None
            assert on_loop._db.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    async with SQLiteStore(tmp_path / "default.sqlite") as default:
        assert await _pragma(default, "synchronous") == expected["normal"]


# ------------------------------------------------------------------ files


@pytest.mark.parametrize(("query", "fsyncs_expected"),
                         [("", True), ("durability=strict", True),
                          ("durability=normal", True), ("fsync=false", False)])
async def test_file_store_fsyncs_each_write_unless_told_not_to(
        query: str, fsyncs_expected: bool, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The file store's author documents: fsync the file and its folder before a write
    returns, on by default; only ``fsync=false`` turns it off."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store = open_store(f"file://{tmp_path}/data?namespace=dur&{query}")
    assert isinstance(store, FileStore)
    long_key = "long:" + "x" * 300  # kept in a sub-folder (hex names are cut at 240)
    async with store:
        synced.clear()
        await store.put("k", VALUE)
        assert await store.get("k") == VALUE
        # one fsync of the data file, one of the folder holding the new name
        assert (len(synced) >= 2) is fsyncs_expected, synced
        await store.put_many([("a", VALUE), ("b", VALUE), (long_key, VALUE)])
        synced.clear()
        # a delete is a change of the folder: unless it is fsynced, the key can come back
        assert await store.delete("k") is True
        assert bool(synced) is fsyncs_expected, synced
        synced.clear()
        assert await store.delete_many(["a", "b", long_key]) == 3
        assert (len(synced) >= 2) is fsyncs_expected, synced


def test_file_store_strict_refuses_fsync_off(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fsync"):
        open_store(f"file://{tmp_path}/data?durability=strict&fsync=false")


# ------------------------------------------------------------------ PostgreSQL


async def _open_and_use(store: Any) -> None:
    async with store:
        await store.put("k", VALUE)
        assert orjson.loads(await store.get("k") or b"") == orjson.loads(VALUE)


async def test_postgresql_strict_on_the_shared_server(tmp_path: Path) -> None:
    """The shared server runs the defaults (synchronous_commit=on, fsync=on): strict opens.
    A connection option turning synchronous_commit off is refused, naming it; the normal
    profile does not check and inherits whatever the session has."""
    connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        assert await connection.fetchval("SHOW synchronous_commit") == "on"
        assert await connection.fetchval("SHOW fsync") == "on"
    finally:
        await connection.close()
    namespace = unique("dur_pg")
    try:
        await _open_and_use(open_store(f"{POSTGRES_URL}?namespace={namespace}&durability=strict"))
        for lax in ("off", "local", "remote_write"):
            store = open_store(f"{POSTGRES_URL}?namespace={namespace}&durability=strict"
                               f"&synchronous_commit={lax}")
            with pytest.raises(ConfigError, match=f"synchronous_commit={lax}"):
                await store.open()
        await _open_and_use(open_store(f"{POSTGRES_URL}?namespace={namespace}"
                                       "&synchronous_commit=off"))
    finally:
        await drop_tables(POSTGRES_URL, {namespace})


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


async def test_postgresql_strict_against_a_server_configured_to_lose_commits(
        private_postgres: PrivatePostgres) -> None:
    """A role whose synchronous_commit is off, then a server with fsync off: strict refuses
    both, naming the setting; after the server is put right, strict opens again."""
    server = private_postgres
    server.psql("DROP ROLE IF EXISTS lax; CREATE ROLE lax LOGIN SUPERUSER; "
                "ALTER ROLE lax SET synchronous_commit = off")
    strict_lax = PostgreSQLStore(server.url(user="lax"), namespace="dur_lax",
                                 durability="strict")
    with pytest.raises(ConfigError, match="synchronous_commit=off"):
        await strict_lax.open()
    await _open_and_use(PostgreSQLStore(server.url(user="lax"), namespace="dur_lax"))
    await _open_and_use(PostgreSQLStore(server.url(), namespace="dur_ok", durability="strict"))

    server.psql("ALTER SYSTEM SET fsync = off")
    server.psql("SELECT pg_reload_conf()")
    try:
        assert server.psql("SHOW fsync").strip() == "off"
        with pytest.raises(ConfigError, match="fsync=off"):
            await PostgreSQLStore(server.url(), namespace="dur_ok", durability="strict").open()
    finally:
        server.psql("ALTER SYSTEM RESET fsync")
        server.psql("SELECT pg_reload_conf()")
    assert server.psql("SHOW fsync").strip() == "on"
    await _open_and_use(PostgreSQLStore(server.url(), namespace="dur_ok", durability="strict"))


# ------------------------------------------------------------------ Redis


async def _config(url: str, name: str) -> str:
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        reply = await client.config_get(name)
    finally:
        await client.aclose()
    return str(reply[name])


async def test_redis_strict_refuses_the_shared_server_without_appendonly() -> None:
    assert await _config(REDIS_URL, "appendonly") == "no", "premise: the shared Redis is no AOF"
    namespace = unique("dur_redis")
    store = open_store(f"{REDIS_URL}?namespace={namespace}&durability=strict")
    assert isinstance(store, RedisStore)
    with pytest.raises(ConfigError, match="appendonly no"):
        await store.open()
    assert len(store._clients) == 0  # the refused open left no connection behind
    # The default profile checks nothing: it opens on the same server.
    default = open_store(f"{REDIS_URL}?namespace={namespace}")
    async with default:
        assert await default.get("absent") is None


async def test_redis_strict_on_a_private_server() -> None:
    """appendonly yes + noeviction: accepted; switch the eviction policy: refused, naming it."""
    with PrivateRedis("--appendonly", "yes", "--maxmemory-policy", "noeviction") as server:
        store = open_store(f"{server.url}?namespace=dur&durability=strict")
        await _open_and_use(store)
        client = redis_asyncio.Redis.from_url(server.url)
        try:
            await client.config_set("maxmemory-policy", "allkeys-lru")
            with pytest.raises(ConfigError, match="maxmemory-policy allkeys-lru"):
                await open_store(f"{server.url}?namespace=dur&durability=strict").open()
            await client.config_set("maxmemory-policy", "noeviction")
            await client.config_set("appendonly", "no")
            with pytest.raises(ConfigError, match="appendonly no"):
                await open_store(f"{server.url}?namespace=dur&durability=strict").open()
        finally:
            await client.aclose()


# ------------------------------------------------------------------ MongoDB


class _WriteConcernsSent(monitoring.CommandListener):
    """Records the writeConcern field of every write command the driver sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("insert", "update", "delete"):
            self.sent.append(event.command.get("writeConcern"))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.parametrize(("query", "concern", "on_the_wire"), [
    ("durability=strict", WriteConcern(w="majority", j=True), {"w": "majority", "j": True}),
    # strict wins over a weaker write concern written in the URL
    ("durability=strict&w=1&journal=false", WriteConcern(w="majority", j=True),
     {"w": "majority", "j": True}),
    # normal: the client's default, so no writeConcern field and the server's default (w:1)
    ("durability=normal", WriteConcern(), None),
    ("", WriteConcern(), None),
])
async def test_mongodb_write_concern_of_each_profile(query: str, concern: WriteConcern,
                                                     on_the_wire: Any) -> None:
    namespace = unique("dur_mongo")
    listener = _WriteConcernsSent()
    url = f"{mongodb_url()}?namespace={namespace}&{query}"
    store = open_store(url, client_options={"event_listeners": [listener]})
    assert isinstance(store, MongoDBStore)
    try:
        async with store:
            assert store._collection.write_concern == concern
            await store.put("k", VALUE)
            assert orjson.loads(await store.get("k") or b"") == orjson.loads(VALUE)
            assert await store.delete("k") is True
    finally:
        drop_collections([namespace])
    assert listener.sent == [on_the_wire, on_the_wire]


# ------------------------------------------------------------------ docs/durability.md


def test_the_durability_section_states_each_default() -> None:
    """The defaults checked above are the ones docs/durability.md states."""
    text = DOC.read_text()
    for fact in ("`synchronous=NORMAL`", "`synchronous=FULL`", "`fsync=false`",
                 "`synchronous_commit`", "`w=\"majority\", j=True`", "`appendonly yes`",
                 "`maxmemory-policy noeviction`", "`durability=normal`"):
        assert fact in text, fact
