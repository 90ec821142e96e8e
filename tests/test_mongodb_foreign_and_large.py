"""MongoDB: documents written by other programs keep their field names, and batches of many
long keys stay below the 16 MiB command limit. Runs against SecantusDB (or
KVSESSIONS_TEST_MONGODB_URL)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient

from kvsessions.kv.mongodb import MongoDBStore, escape_names, unescape_names
from tests.mongo_server import drop_collections, mongodb_url


@pytest.fixture
def namespace() -> Iterator[str]:
    name = "t_" + uuid.uuid4().hex[:16]
    yield name
    drop_collections({name})


@pytest.fixture
async def raw_client() -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url())
    yield client
    await client.close()


#: Names another program may write, none of which this store's escape produces.
FOREIGN = {"growth%2024": 1, "50%": 2, "%41": 3, "a%2eb": 4, "x%24": 5, "%%": 6,
           "nested": {"%5Fid": 7, "%5Fexpires_at": 8, "rate%": [{"%20": 9}]}}
#: What older releases of this store wrote for {"a.b", "$x", "%", "", "_id", "k\0"}.
ESCAPED_BEFORE = {"a%2Eb": 1, "%24x": 2, "%25": 3, "%": 4, "%5Fid": 5, "k%00": 6,
                  "n": {"%24in": [{"c%2Ed": None}], "_id": 7}}
PLAIN = {"a.b": 1, "$x": 2, "%": 3, "": 4, "_id": 5, "k\x00": 6,
         "n": {"$in": [{"c.d": None}], "_id": 7}}


async def test_names_written_by_other_programs_read_back_unchanged(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    collection = raw_client.get_default_database()[namespace]
    await collection.insert_many([{"_id": "foreign", **FOREIGN},
                                  {"_id": "ours-before", **ESCAPED_BEFORE}])
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        assert orjson.loads(await store.get("foreign") or b"") == FOREIGN
        # Documents this store wrote before (escaped, unmarked) still read as written.
        assert orjson.loads(await store.get("ours-before") or b"") == PLAIN
        scanned = {key: orjson.loads(value) async for key, value in store.scan()}
        assert scanned == {"foreign": FOREIGN, "ours-before": PLAIN}
        # And a foreign document copied through the store keeps its names.
        await store.put("copy", await store.get("foreign") or b"")
        assert orjson.loads(await store.get("copy") or b"") == FOREIGN


def test_unescape_leaves_names_the_escape_cannot_write() -> None:
    assert unescape_names(FOREIGN) == FOREIGN
    assert unescape_names(ESCAPED_BEFORE) == PLAIN
    assert escape_names(PLAIN) == ESCAPED_BEFORE


async def test_get_many_and_delete_many_with_40000_long_keys(namespace: str) -> None:
    keys = [f"k{i:06d}:" + "x" * 443 for i in range(40_000)]  # 450 bytes each, 18 MB in all
    stored = keys[::1000]
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        await store.put_many([(key, orjson.dumps({"i": keys.index(key)})) for key in stored])
        values = await store.get_many(keys)
        assert [key for key, value in zip(keys, values, strict=True) if value] == stored
        assert orjson.loads(values[1000] or b"") == {"i": 1000}
        assert await store.delete_many(keys) == len(stored)
        assert await store.keys() == []
