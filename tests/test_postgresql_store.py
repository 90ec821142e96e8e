"""What only the PostgreSQL adapter promises, beyond the shared contract: rows that psql can
query, the exact-bytes fallback, byte order, errors without passwords, pools and durability."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from kvsessions.errors import (
    ConfigError,
    KVSessionsError,
    MissingDependencyError,
    StoreUnavailableError,
)
from kvsessions.kv import open_store
from kvsessions.kv.postgresql import PostgreSQLStore, jsonb_loses
from kvsessions.testing import same_json
from kvsessions.testing.contract import HARD_VALUES, utf8_sorted
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.net import free_port

PASSWORD = "S3cr3t!@#"
PASSWORD_IN_URL = "S3cr3t%21%40%23"


@pytest.fixture
def namespaces() -> Iterator[set[str]]:
    used: set[str] = set()
    yield used
    asyncio.run(drop_tables(POSTGRES_URL, used))


@pytest.fixture
def new_namespace(namespaces: set[str]) -> Any:
    def make() -> str:
        name = "pgt_" + uuid.uuid4().hex[:16]
        namespaces.add(name)
        return name
    return make


@pytest.fixture
async def store(new_namespace: Any) -> AsyncIterator[PostgreSQLStore]:
    async with PostgreSQLStore(POSTGRES_URL, namespace=new_namespace(),
                               max_pool_size=3) as opened:
        yield opened


@pytest.fixture
async def connection() -> AsyncIterator[Any]:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        yield conn
    finally:
        await conn.close()


async def row(connection: Any, store: PostgreSQLStore, key: str) -> Any:
    return await connection.fetchrow(
        f'SELECT value::text AS value, raw, value->>\'kind\' AS kind, expires_at '
        f'FROM "{store.namespace}" WHERE key = $1', key)


# ---------------------------------------------------------------------- what psql sees


async def test_value_is_queryable_jsonb(store: PostgreSQLStore, connection: Any) -> None:
    document = {"kind": "message", "v": 1, "content": "hello", "meta": {"id": "3e4f-1e9a"}}
    await store.put("message:s1:m1", orjson.dumps(document))
    stored = await row(connection, store, "message:s1:m1")
    assert stored["kind"] == "message"
    assert orjson.loads(stored["value"]) == document
    assert stored["raw"] is None  # "3e4" in a string is no number: no second copy
    count = await connection.fetchval(
        f'SELECT count(*) FROM "{store.namespace}" WHERE value @> $1::jsonb',
        '{"kind": "message"}')
    assert count == 1


async def test_nul_in_strings_keeps_exact_bytes(store: PostgreSQLStore,
                                                connection: Any) -> None:
    document = HARD_VALUES["nul_in_string"] | {"kind": "message"}
    value = orjson.dumps(document)
    await store.put("nul", value)
    stored = await row(connection, store, "nul")
    assert bytes(stored["raw"]) == value
    assert stored["kind"] == "message"
    assert orjson.loads(stored["value"])["text"] == "before\ufffdafter"
    assert await store.get("nul") == value
    assert await store.get_many(["nul"]) == [value]
    assert [item async for item in store.scan("nul")] == [("nul", value)]


@pytest.mark.parametrize("text", [
    b'{"huge": 1e300}', b'{"big": 1e16}', b'{"neg0": -0.0}', b'{"a": [1, -0.0E0]}',
    b'{"e": 1E5}', b'{"e": 1.0e2}', b'{"e": 1.5e300, "s": "x"}',
])
async def test_numbers_jsonb_would_change_keep_exact_bytes(
    store: PostgreSQLStore, connection: Any, text: bytes
) -> None:
    assert jsonb_loses(text)
    await store.put("n", text)
    assert (await row(connection, store, "n"))["raw"] is not None
    assert same_json(orjson.loads(await store.get("n") or b""), orjson.loads(text))
    assert await store.put_if_absent("n2", text) is True
    await store.put_many([("n3", text)])
    for key in ("n2", "n3"):
        assert same_json(orjson.loads(await store.get(key) or b""), orjson.loads(text))


@pytest.mark.parametrize("text", [
    b'{"f": 1.5, "tiny": 2.5e-7, "neg": -0.5}',
    b'{"one": 1.0, "n": -0, "zero": 0.0}',
    b'{"id": "3e4f", "t": "2026-01-01T00:00:00-0.0"}',
    b'{"escaped": "\\\\u0001", "x": 0.1}',
])
async def test_numbers_jsonb_keeps_need_no_copy(
    store: PostgreSQLStore, connection: Any, text: bytes
) -> None:
    await store.put("n", text)
    assert (await row(connection, store, "n"))["raw"] is None
    assert same_json(orjson.loads(await store.get("n") or b""), orjson.loads(text))


def test_float_screen_decides_on_the_document() -> None:
    assert jsonb_loses(orjson.dumps(HARD_VALUES["floats"]))
    assert jsonb_loses(orjson.dumps(HARD_VALUES["nul_in_string"]))
    assert not jsonb_loses(orjson.dumps({"id": "1e9", "f": 0.25, "i": 7}))
    assert not jsonb_loses(orjson.dumps({"one": 1.0, "z": 0.0}))  # no exponent anywhere
    assert jsonb_loses(orjson.dumps({"id": "1e9", "z": 0.0}))  # cautious: a copy too many
    assert not jsonb_loses(orjson.dumps({"tiny": 1e-300}))  # kept as 0.000...1, exact
    assert jsonb_loses(orjson.dumps({"tiny": 1e-300, "neg0": -0.0}))


# ---------------------------------------------------------------------- order and schema


async def test_key_column_sorts_bytes(store: PostgreSQLStore, connection: Any) -> None:
    keys = ["a", "B", "é", "e", "\uffff", "\U00010000", "日本", "Z", "a\x01", "~"]
    await store.put_many([(key, b"{}") for key in keys])
    in_sql = await connection.fetch(f'SELECT key FROM "{store.namespace}" ORDER BY key')
    assert [r["key"] for r in in_sql] == utf8_sorted(keys) == await store.keys()
    collation = await connection.fetchval(
        "SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation "
        "WHERE a.attrelid = to_regclass($1) AND a.attname = 'key'", f'"{store.namespace}"')
    assert collation == "C"


async def test_refuses_a_table_that_is_not_ours(new_namespace: Any, connection: Any) -> None:
    namespace = new_namespace()
    await connection.execute(f'CREATE TABLE "{namespace}" (key text PRIMARY KEY, value jsonb '
                             'NOT NULL, raw bytea, expires_at timestamptz)')
    with pytest.raises(ConfigError, match='COLLATE "C"'):
        await PostgreSQLStore(POSTGRES_URL, namespace=namespace).open()
    other = new_namespace()
    await connection.execute(f'CREATE TABLE "{other}" (key text PRIMARY KEY, doc text)')
    with pytest.raises(ConfigError, match="not a kvsessions table"):
        await PostgreSQLStore(POSTGRES_URL, namespace=other).open()


async def test_a_namespace_naming_an_index_says_so(store: PostgreSQLStore) -> None:
    # PostgreSQL names the primary key index of table X "X_pkey": the namespace "X_pkey" is
    # taken by that index, which is not a table of the wrong columns.
    await store.put("k", b'{"a": 1}')
    taken = f"{store.namespace}_pkey"
    with pytest.raises(ConfigError, match=f"names an index of table '{store.namespace}', not a "
                                          "table"):
        await PostgreSQLStore(POSTGRES_URL, namespace=taken).open()
    assert await store.get("k") == b'{"a": 1}'


async def test_text_search_reads_its_gin_index(store: PostgreSQLStore, connection: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's connections turn bitmap scans off, and a GIN index is read only by one: a
    search must still be planned on its index, not by reading the prefix by key."""
    from kvsessions.kv.postgresql_text import PostgreSQLTextIndex
    from kvsessions.kv.text_search import TextIndex

    index = TextIndex("note:", "text")
    # Enough rows, and a word rare enough, that reading the prefix by key costs more.
    for start in range(0, 20_000, 5000):
        await store.put_many([(f"note:{i:05}", orjson.dumps({"text": f"word{i % 1000} filler"}))
                              for i in range(start, start + 5000)])
    await connection.execute(f'ANALYZE "{store.namespace}"')
    statements: list[str] = []
    planned = store._with_bitmap_scans

    async def recording(sql: str, *args: Any) -> list[Any]:
        statements.append(sql)
        return await planned(sql, *args)

    monkeypatch.setattr(store, "_with_bitmap_scans", recording)
    hits = await store.search_text(index, "word7", limit=100)
    assert [hit.key for hit in hits][:1] == ["note:00007"] and len(hits) == 20
    search = PostgreSQLTextIndex(store.namespace, index, store._sql.read).search
    assert statements == [search]
    plan = "\n".join(row[0] for row in await planned(
        "EXPLAIN " + search, "word7", "note:", "note;", 100, 0))
    assert "Bitmap Index Scan on kvs_text_" in plan, plan


async def test_concurrent_openers_create_the_table_once(new_namespace: Any) -> None:
    namespace = new_namespace()
    stores = [PostgreSQLStore(POSTGRES_URL, namespace=namespace, max_pool_size=1)
              for _ in range(6)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        await stores[0].put("k", b'{"v": 1}')
        assert await stores[5].get("k") == b'{"v": 1}'
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_ttl_is_kept_on_the_server_clock(store: PostgreSQLStore,
                                               connection: Any) -> None:
    await store.put("t", b"{}", ttl=100)
    remaining = await connection.fetchval(
        f'SELECT extract(epoch FROM expires_at - now()) FROM "{store.namespace}" '
        "WHERE key = 't'")
    assert 90 < remaining <= 100
    await store.put("t", b"{}")
    assert (await row(connection, store, "t"))["expires_at"] is None


async def test_put_many_beyond_one_batch(new_namespace: Any) -> None:
    async with PostgreSQLStore(POSTGRES_URL, namespace=new_namespace(),
                               batch_size=3) as store:
        items = [(f"k{i:02d}", orjson.dumps({"i": i})) for i in range(10)]
        await store.put_many([*items, ("nul", orjson.dumps({"s": "\u0000"}))])
        assert [*(k for k, _ in items), "nul"] == await store.keys()
        assert await store.delete_many(["k00", "k01", "nope"]) == 2


# ---------------------------------------------------------------------- options


def test_options_from_the_url_and_arguments() -> None:
    store = open_store(f"{POSTGRES_URL}?namespace=abc&min_pool_size=2&max_pool_size=7"
                       "&connect_timeout=1.5&command_timeout=9&acquire_timeout=3"
                       "&durability=strict&batch_size=250&application_name=kvs",
                       max_pool_size=8)
    assert isinstance(store, PostgreSQLStore)
    assert (store.namespace, store.min_pool_size, store.max_pool_size) == ("abc", 2, 8)
    assert (store.connect_timeout, store.command_timeout, store.acquire_timeout) == (1.5, 9, 3)
    assert (store.durability, store.scan_batch_size) == ("strict", 250)
    assert "application_name=kvs" in store._dsn and "namespace" not in store._dsn
    assert open_store("postgres://u@h/db").namespace == "kvsessions"


@pytest.mark.parametrize("query", [
    "min_pool_size=x", "max_pool_size=0", "min_pool_size=5&max_pool_size=2",
    "connect_timeout=0", "acquire_timeout=-1", "command_timeout=nan", "durability=fast",
    "batch_size=0", "namespace=a;drop",
])
def test_bad_options_are_refused(query: str) -> None:
    with pytest.raises(ConfigError):
        open_store(f"postgresql://u:{PASSWORD_IN_URL}@h/db?{query}")


def test_needs_a_url_or_a_pool() -> None:
    with pytest.raises(ConfigError):
        PostgreSQLStore()


# ---------------------------------------------------------------------- errors and secrets


def _no_password_anywhere(error: BaseException, store: Any,
                          caplog: pytest.LogCaptureFixture) -> None:
    texts = [repr(store), str(store)]
    current: BaseException | None = error
    while current is not None:
        texts += [str(current), repr(current), *map(str, current.args)]
        current = current.__cause__ or current.__context__
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    for secret in (PASSWORD, PASSWORD_IN_URL, "S3cr3t"):
        assert not any(secret in text for text in texts), secret


async def test_refused_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://postgres:{PASSWORD_IN_URL}@127.0.0.1:{free_port()}/test"
    store = open_store(url, connect_timeout=2)
    with pytest.raises(StoreUnavailableError) as caught:
        await store.get("k")
    assert "postgres:***@127.0.0.1" in str(caught.value)
    _no_password_anywhere(caught.value, store, caplog)


async def test_silent_server_times_out(caplog: pytest.LogCaptureFixture) -> None:
    """A server that accepts and never answers: the connect timeout, not a hang."""
    caplog.set_level(logging.DEBUG)
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        store = PostgreSQLStore(
            f"postgresql://postgres:{PASSWORD_IN_URL}@127.0.0.1:{port}/test?connect_timeout=0.5")
        with pytest.raises(StoreUnavailableError) as caught:
            await store.open()
        assert accepted, "the store never reached the server"
        assert "***" in str(caught.value)
        _no_password_anywhere(caught.value, store, caplog)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_bad_login(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host = POSTGRES_URL.split("@", 1)[1]
    store = open_store(f"postgresql://kvs_no_such_user:{PASSWORD_IN_URL}@{host}")
    with pytest.raises(StoreUnavailableError, match="kvs_no_such_user") as caught:
        await store.open()
    _no_password_anywhere(caught.value, store, caplog)


async def test_missing_database(new_namespace: Any) -> None:
    base = POSTGRES_URL.rsplit("/", 1)[0]
    with pytest.raises(StoreUnavailableError, match="kvs_no_such_db"):
        await PostgreSQLStore(f"{base}/kvs_no_such_db").open()


def test_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.delitem(sys.modules, "kvsessions.kv.postgresql")
    fresh = importlib.import_module("kvsessions.kv.postgresql")
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvsessions\[postgresql\]'"):
        fresh.PostgreSQLStore("postgresql://u@h/db")
    with pytest.raises(ImportError):
        open_store("postgresql://u@h/db")


async def test_pool_exhaustion_is_a_typed_error(new_namespace: Any) -> None:
    async with PostgreSQLStore(POSTGRES_URL, namespace=new_namespace(), max_pool_size=1,
                               acquire_timeout=0.2) as store:
        await store.put("k", b"{}")
        pool: Any = store._pool
        held = await pool.acquire()  # the only connection, busy elsewhere
        try:
            with pytest.raises(StoreUnavailableError, match="max_pool_size=1"):
                await store.get("k")
        finally:
            await pool.release(held, None)
        assert await store.get("k") == b"{}"


async def test_recovers_after_the_server_drops_connections(
    new_namespace: Any, connection: Any
) -> None:
    app = "kvs_" + uuid.uuid4().hex[:10]
    async with PostgreSQLStore(f"{POSTGRES_URL}?application_name={app}", min_pool_size=2,
                               namespace=new_namespace()) as store:
        await store.put("k", b'{"v": 1}')
        killed = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1", app)
        assert killed >= 1
        outcomes: list[object] = []
        for _ in range(4):  # each dropped connection may fail one call, then it is replaced
            try:
                outcomes.append(await store.get("k"))
            except KVSessionsError as exc:
                assert isinstance(exc, StoreUnavailableError)
                outcomes.append(exc)
        assert outcomes[-1] == b'{"v": 1}'


# ---------------------------------------------------------------------- pools and durability


async def test_a_pool_passed_in_is_used_and_stays_open(new_namespace: Any) -> None:
    pool = await asyncpg.create_pool(POSTGRES_URL, min_size=1, max_size=2)
    try:
        store = PostgreSQLStore(pool=pool, namespace=new_namespace())
        async with store:
            assert "pool" in repr(store)
            for name in ("nul_in_string", "floats", "mixed"):
                value = orjson.dumps(HARD_VALUES[name])
                await store.put(name, value)
                assert same_json(orjson.loads(await store.get(name) or b""), HARD_VALUES[name])
            await store.put_many([("p1", b'{"a": 1}'), ("p2", b'{"b": [2]}')])
            assert [k async for k, _ in store.scan("p")] == ["p1", "p2"]
            assert await store.put_if_absent("p1", b"{}") is False
            for name in ("nul_in_string", "floats"):  # compare_and_set's own statements
                read = await store.get(name)
                assert await store.compare_and_set(name, read, b'{"c": 1}') is True
                assert await store.compare_and_set(name, read, b'{"c": 2}') is False
                assert await store.compare_and_set(name, await store.get(name), None) is True
            # compare_and_set_with's statements, with other keys swapped (one kept in raw)
            await store.put_many([("h", b'{"v": 1}'), ("n", orjson.dumps(HARD_VALUES["mixed"])),
                                  ("raw", orjson.dumps(HARD_VALUES["nul_in_string"]))])
            head, mixed, raw = await store.get_many(["h", "n", "raw"])
            assert head is not None and mixed is not None and raw is not None
            assert await store.compare_and_set_with(
                "h", head, b'{"v": 2}', swap=[("n", b'{"other": 1}', None)]) is False
            assert await store.compare_and_set_with(
                "h", head, b'{"v": 2}', swap=[("n", mixed, b'{"n": 2}'), ("raw", raw, None)])
            assert await store.get_many(["h", "n", "raw"]) == [b'{"v": 2}', b'{"n": 2}', None]
            assert await store.compare_and_set_with("h", b'{"v": 2}', b'{"v": 3}',
                                                    create=[("c", b'{"c": 1}')])
            assert await store.get_and_last("h", "p") == (b'{"v": 3}', ("p2", b'{"b": [2]}'))
        assert not pool._closed
        # Our codec never lands on the caller's connections: jsonb still comes back as text.
        assert await pool.fetchval("SELECT '{\"a\": 1}'::jsonb") == '{"a": 1}'
    finally:
        await pool.close()


async def test_durability_strict_checks_synchronous_commit(new_namespace: Any) -> None:
    async with PostgreSQLStore(POSTGRES_URL, namespace=new_namespace(),
                               durability="strict") as store:
        await store.put("k", b"{}")
    lax = PostgreSQLStore(f"{POSTGRES_URL}?synchronous_commit=off", durability="strict",
                          namespace=new_namespace())
    with pytest.raises(ConfigError, match="synchronous_commit=off"):
        await lax.open()
    async with PostgreSQLStore(f"{POSTGRES_URL}?synchronous_commit=off",
                               namespace=new_namespace()) as normal:
        await normal.put("k", b"{}")


async def test_a_scan_reads_its_page_in_key_order_not_the_whole_prefix(
        store: PostgreSQLStore) -> None:
    """With statistics older than the table (a store filled a minute ago), PostgreSQL chose
    a bitmap scan of the whole prefix and a sort for the first page of a scan: a listing then
    read every index entry. The store's connections keep to the key index."""
    await store.put_many([(f"index:sessions:{i:06d}", b'{"kind": "index", "v": 1}')
                          for i in range(2000)])
    sql = store._sql.scan[True, True, True]  # reverse, lower bound inclusive, upper bound
    pool = store._pool
    assert pool is not None
    connection = await pool.acquire()
    try:
        plan = "\n".join(row[0] for row in await connection.fetch(
            "EXPLAIN (ANALYZE) " + sql, "index:sessions:", 116, "index:sessions;"))
    finally:
        await pool.release(connection, None)
    assert "Bitmap" not in plan and "Sort" not in plan, plan
    assert "Index Scan Backward" in plan, plan


async def test_a_read_of_many_keys_planned_on_a_small_table_uses_the_key_index_later(
        store: PostgreSQLStore) -> None:
    """A prepared statement keeps its generic plan: planned while the namespace was small,
    ``key = ANY($1)`` read the whole table, and went on doing so after the table grew (a
    listing reads its heads with it: O(store)). The store's connections never seq-scan."""
    await store.put_many([(f"session:{i:03d}", b"{}") for i in range(5)])
    sql = store._sql.get_many
    pool = store._pool
    assert pool is not None
    connection = await pool.acquire()
    try:
        await connection.execute(f'ANALYZE "{store.namespace}"')  # statistics: a small table
        await connection.execute(f"PREPARE many_keys AS {sql}")
        for _ in range(6):  # from the sixth run on, PostgreSQL may keep a generic plan
            await connection.fetch("EXECUTE many_keys('{session:001,session:002}')")
        await store.put_many([(f"session:{i:06d}", b"{}") for i in range(5000)])
        plan = "\n".join(row[0] for row in await connection.fetch(
            "EXPLAIN EXECUTE many_keys('{session:000001,session:000002}')"))
        await connection.execute("DEALLOCATE many_keys")
    finally:
        await pool.release(connection, None)
    assert "Seq Scan" not in plan, plan


async def test_statements_keep_one_plan(new_namespace: Any) -> None:
    """Left to choose, PostgreSQL planned every ``compare_and_set_with`` (and every scan page)
    again at every call, as their generic plans looked dearer than plans for the values:
    planning took longer than running the statement. The store's connections keep one."""
    async with PostgreSQLStore(POSTGRES_URL, namespace=new_namespace(), min_pool_size=1,
                               max_pool_size=1) as store:
        await store.put("h", b'{"n": 0}')
        for n in range(8):
            assert await store.compare_and_set_with(
                "h", await store.get("h"), orjson.dumps({"n": n + 1}), put=[(f"e{n}", b"{}")])
            assert await store.keys("e", reverse=True) == [f"e{i}" for i in range(n, -1, -1)]
        pool: Any = store._pool
        connection = await pool.acquire()
        try:
            plans = await connection.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE 'WITH swap%' OR statement LIKE 'SELECT key,%'")
        finally:
            await pool.release(connection, None)
    assert len(plans) == 2, plans
    assert all(row["custom_plans"] == 0 and row["generic_plans"] >= 8 for row in plans), plans
