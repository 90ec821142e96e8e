"""PostgreSQL with ``partitions=N``: the namespace table ``PARTITION BY HASH`` on the key's
partition (``kvsessions.kv.partitions``), one session's rows in one partition, single-key
statements pruned to one partition, scans still in key order (the conformance suite runs the
whole contract on such tables as backend ``postgresql_partitioned``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from kvsessions.errors import ConfigError
from kvsessions.kv.partitions import partition_of
from kvsessions.kv.postgresql import PARTITION_COLUMN, PostgreSQLStore
from kvsessions.kv.registry import open_store
from tests.backends.postgresql import POSTGRES_URL, drop_tables


@pytest.fixture
def namespace() -> Iterator[str]:
    name = "pp_" + uuid.uuid4().hex[:12]
    yield name
    import asyncio

    asyncio.run(drop_tables(POSTGRES_URL, {name}))


@pytest.fixture
async def connection() -> AsyncIterator[Any]:
    connection = await asyncpg.connect(POSTGRES_URL)
    yield connection
    await connection.close()


async def test_table_is_hash_partitioned_and_rows_follow_their_session(
        namespace: str, connection: Any) -> None:
    keys = [f"message:s{n}:{i:02d}" for n in range(12) for i in range(3)]
    keys += [f"session:s{n}" for n in range(12)]
    async with open_store(f"{POSTGRES_URL}?namespace={namespace}&partitions=4") as store:
        await store.put_many([(key, orjson.dumps({"k": key})) for key in keys])
        await store.put("session:s0", orjson.dumps({"k": 0}))
        assert await store.keys() == sorted(keys)
        assert await store.keys("message:s3:", reverse=True) == [
            "message:s3:02", "message:s3:01", "message:s3:00"]
    strategy = await connection.fetchval(
        "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = to_regclass($1)",
        f'"{namespace}"')
    assert strategy in ("h", b"h")  # "char" comes back as bytes
    children = await connection.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass($1) ORDER BY c.relname", f'"{namespace}"')
    assert [row[0] for row in children] == [f"{namespace}-p{i}" for i in range(4)]
    rows = await connection.fetch(
        f'SELECT key, {PARTITION_COLUMN}, tableoid::regclass::text FROM "{namespace}"')
    assert all(row[1] == partition_of(row[0]) for row in rows)
    where: dict[str, set[str]] = {}
    for _key, partition, table in rows:
        where.setdefault(partition, set()).add(table)
    assert all(len(tables) == 1 for tables in where.values())  # a session in one partition
    assert len({table for tables in where.values() for table in tables}) > 1  # sessions spread
    plan = await connection.fetchval(
        f'EXPLAIN (FORMAT JSON) SELECT value FROM "{namespace}" WHERE key = $1 AND '
        f"{PARTITION_COLUMN} = split_part($1, ':', 2)", "message:s1:00")
    node = orjson.loads(plan)[0]["Plan"]  # pruned to one partition: no Append over all four
    assert node["Node Type"] == "Index Scan"
    assert node["Relation Name"].startswith(f"{namespace}-p")


async def test_partitioned_table_opens_without_the_option(namespace: str) -> None:
    async with PostgreSQLStore(POSTGRES_URL, namespace=namespace, partitions=3) as store:
        await store.put("session:a", orjson.dumps({"n": 1}))
    async with PostgreSQLStore(POSTGRES_URL, namespace=namespace) as again:
        read = await again.get("session:a")
        assert orjson.loads(read or b"") == {"n": 1}
        assert await again.put_if_absent("session:a", orjson.dumps({"n": 2})) is False
        assert await again.compare_and_set("session:a", read, orjson.dumps({"n": 3}))
        assert await again.delete("session:a")


async def test_partitions_on_an_unpartitioned_table_is_refused(
        namespace: str, connection: Any) -> None:
    async with PostgreSQLStore(POSTGRES_URL, namespace=namespace) as store:
        await store.put("k", orjson.dumps({}))
    with pytest.raises(ConfigError, match="exists unpartitioned"):
        await PostgreSQLStore(POSTGRES_URL, namespace=namespace, partitions=4).open()
    assert await connection.fetchval(f'SELECT count(*) FROM "{namespace}"') == 1


@pytest.mark.parametrize("bad", [0, -1, "x", 1.5])
def test_bad_partitions_are_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="partitions"):
        PostgreSQLStore(POSTGRES_URL, partitions=bad)
    with pytest.raises(ConfigError, match="partitions"):
        PostgreSQLStore(f"{POSTGRES_URL}?partitions={bad}")
