"""What the conformance suite cannot see on MongoDB: the stored shape, clients handed in, URLs,
errors. Runs against SecantusDB (or KVSESSIONS_TEST_MONGODB_URL)."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient

from kvsessions.errors import ConfigError, DocumentTooLargeError, StoreUnavailableError
from kvsessions.kv.mongodb import (
    EXPIRES_FIELD,
    PARTITION_FIELD,
    MongoDBStore,
    escape_names,
    unescape_names,
)
from kvsessions.kv.registry import open_store
from kvsessions.testing import same_json
from tests.mongo_server import drop_collections, mongodb_url
from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent


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


def _depth(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((_depth(child) for child in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((_depth(child) for child in node), default=0)
    return 0


# ---------------------------------------------------------------------- stored shape


async def test_partition_field_and_documents_of_the_release_without_it(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    """Every document carries its key's partition (the shard key); a scan inside one session
    asks for it and still finds documents an earlier release wrote without it, which stay
    readable and writable, and ``upgrade_layout`` gives them the field."""
    collection = raw_client.get_default_database()[namespace]
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        await store.put_many([(key, orjson.dumps({"k": key})) for key in (
            "session:s1", "message:s1:01", "message:s1:02", "message:s2:01")])
        found = await collection.find({}, sort=[("_id", 1)]).to_list(None)
        assert {d["_id"]: d[PARTITION_FIELD] for d in found} == {
            "message:s1:01": "s1", "message:s1:02": "s1", "message:s2:01": "s2",
            "session:s1": "s1"}
        # As the release before partitions stored them: no _partition.
        await collection.insert_many([{"_id": key, "k": key} for key in (
            "message:s1:00", "session:old", "message:old:01", "session:cas")])
        assert await store.keys("message:s1:") == [
            "message:s1:00", "message:s1:01", "message:s1:02"]
        assert await store.keys("message:s1:", reverse=True) == [
            "message:s1:02", "message:s1:01", "message:s1:00"]
        assert len(await store.keys()) == 8
        assert orjson.loads(await store.get("message:s1:00") or b"") == {"k": "message:s1:00"}
        await store.put("session:old", orjson.dumps({"k": 2}))
        await store.put_many([("message:old:01", orjson.dumps({"k": 3}))])
        assert await store.put_if_absent("session:old", orjson.dumps({"k": 4})) is False
        read = await store.get("session:cas")
        assert await store.compare_and_set("session:cas", read, orjson.dumps({"k": 5}))
        rewritten = await collection.find(
            {"_id": {"$in": ["session:old", "message:old:01", "session:cas"]}}).to_list(None)
        assert {d["_id"]: (d[PARTITION_FIELD], d["k"]) for d in rewritten} == {
            "session:old": ("old", 2), "message:old:01": ("old", 3), "session:cas": ("cas", 5)}
        assert await store.upgrade_layout() == 1  # message:s1:00
        assert await collection.count_documents({PARTITION_FIELD: {"$exists": False}}) == 0
        assert await store.upgrade_layout() == 0
        assert await store.keys("message:s1:") == [
            "message:s1:00", "message:s1:01", "message:s1:02"]

async def test_stored_document_is_native_bson_with_escaped_names(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    value = {"text": "a\u0000b", "n": 2**62, "f": 1.0, "$x": 1, "a.b": 2, "": 3, "_id": "mine",
             "%": "p", EXPIRES_FIELD: "user's", "k\u0000": 4, PARTITION_FIELD: "1",
             "nested": {"$in": [1, {"c.d": None}], "_id": 5, "ok": True}}
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        await store.put("doc:1", orjson.dumps(value), ttl=600)
        raw = await raw_client.get_default_database()[namespace].find_one({"_id": "doc:1"})
        assert raw is not None
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # BSON dates are UTC
        assert raw.pop(EXPIRES_FIELD) > now + datetime.timedelta(minutes=9)
        assert raw == {
            "_id": "doc:1", "text": "a\u0000b", "n": 2**62, "f": 1.0, "%24x": 1, "a%2Eb": 2,
            "%": 3, "%5Fid": "mine", "%25": "p", "%5Fexpires_at": "user's", "k%00": 4,
            "%5Fpartition": "1", "_partition": "1",
            "nested": {"%24in": [1, {"c%2Ed": None}], "_id": 5, "ok": True}}
        assert type(raw["f"]) is float
        assert same_json(orjson.loads(await store.get("doc:1") or b""), value)


async def test_plain_document_is_stored_as_it_is_and_queryable(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    value = {"kind": "message", "v": 1, "role": "user", "meta": {"tokens": 12}}
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        await store.put("m:1", orjson.dumps(value))
        await store.put("m:2", orjson.dumps({**value, "role": "assistant"}))
        collection = raw_client.get_default_database()[namespace]
        assert await collection.find_one({"_id": "m:1"}) == {
            "_id": "m:1", **value, PARTITION_FIELD: "1"}
        found = [doc["_id"] async for doc in collection.find({"role": "assistant",
                                                              "meta.tokens": 12})]
        assert found == ["m:2"]
        # No ttl used yet: no second index to keep up on every write.
        assert list(await collection.index_information()) == ["_id_"]
        await store.put("m:3", orjson.dumps(value), ttl=60)
        indexes = await collection.index_information()
        ttl = [index for index in indexes.values() if index["key"] == [(EXPIRES_FIELD, 1)]]
        assert len(ttl) == 1 and ttl[0]["expireAfterSeconds"] == 0 and ttl[0]["sparse"]


async def test_documents_written_by_others_are_read(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    collection = raw_client.get_default_database()[namespace]
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    await collection.insert_many([{"_id": "a", "x": [1, {"y": "z"}]},
                                  {"_id": "gone", "x": 1, EXPIRES_FIELD: past}])
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        assert orjson.loads(await store.get("a") or b"") == {"x": [1, {"y": "z"}]}
        assert await store.get("gone") is None
        assert await store.keys() == ["a"]
        assert await store.put_if_absent("gone", orjson.dumps({"new": 1})) is True


async def test_depth_100_document_is_stored_100_deep(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    node: Any = {"leaf": 1}
    for _ in range(99):
        node = {"d": node}
    assert _depth(node) == 100
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        await store.put("deep", orjson.dumps(node), ttl=60)
        raw = await raw_client.get_default_database()[namespace].find_one({"_id": "deep"})
        assert _depth(raw) == 100
        assert orjson.loads(await store.get("deep") or b"") == node


async def test_bson_over_16_mib_is_document_too_large(namespace: str) -> None:
    # 3 MB of JSON, ~20 MB of BSON (each array element carries its index as a name).
    value = orjson.dumps({"zeros": [0] * 1_500_000})
    async with MongoDBStore(mongodb_url(), namespace=namespace) as store:
        with pytest.raises(DocumentTooLargeError):
            await store.put("big", value)
        assert await store.keys() == []


NAMES = st.text(alphabet="%$._\x00aF5ide", max_size=5)
TREES = st.recursive(
    st.none() | st.integers(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(NAMES, children,
                                                                       max_size=3),
    max_leaves=8)


@given(st.dictionaries(NAMES | st.sampled_from(["_id", EXPIRES_FIELD]), TREES, max_size=4))
def test_name_escaping_roundtrips(document: dict[str, Any]) -> None:
    escaped = escape_names(document)
    assert "_id" not in escaped and EXPIRES_FIELD not in escaped

    def check(node: Any) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                assert name and not name.startswith("$") and "." not in name
                assert "\x00" not in name
                check(child)
        elif isinstance(node, list):
            for child in node:
                check(child)

    check(escaped)
    assert unescape_names(escaped) == document


# ---------------------------------------------------------------------- clients handed in

async def test_motor_client_passed_in_works_and_stays_open(namespace: str) -> None:
    client: Any = AsyncIOMotorClient(mongodb_url())
    try:
        store = MongoDBStore(client=client, database="kvsessions_test", namespace=namespace)
        async with store:
            await store.put_many([(f"k{i}", orjson.dumps({"i": i})) for i in range(5)])
            await store.put("t", orjson.dumps({"t": 1}), ttl=60)
            assert orjson.loads(await store.get("k3") or b"") == {"i": 3}
            assert await store.put_if_absent("k3", orjson.dumps({})) is False
            assert await store.keys(reverse=True) == ["t", "k4", "k3", "k2", "k1", "k0"]
            assert len(await store.get_many(["k1", "k2", "nope"])) == 3
            assert await store.delete("k1") is True
            assert await store.delete_many(["k2", "k3", "nope"]) == 2
        assert (await client.admin.command("ping"))["ok"] == 1
        assert await client["kvsessions_test"][namespace].count_documents({}) == 3
    finally:
        client.close()


async def test_pymongo_client_and_database_passed_in_stay_open(namespace: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url())
    try:
        async with open_store(mongodb_url(), client=client, namespace=namespace) as store:
            await store.put("k", orjson.dumps({"v": 1}))
        assert (await client.admin.command("ping"))["ok"] == 1
        database = client.get_default_database()
        async with MongoDBStore(database=database, namespace=namespace) as again:
            assert orjson.loads(await again.get("k") or b"") == {"v": 1}
            assert database.name in repr(again)
        assert await database[namespace].count_documents({}) == 1
    finally:
        await client.close()


# ---------------------------------------------------------------------- URLs and options

async def test_url_options_choose_database_namespace_and_durability(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    base = mongodb_url().rsplit("/", 1)[0]
    url = (f"{base}/?database=kvsessions_test&namespace={namespace}&durability=strict"
           "&connect_timeout=3&appname=kvtest")
    async with open_store(url) as store:
        assert isinstance(store, MongoDBStore) and store.namespace == namespace
        await store.put("k", orjson.dumps({"v": 1}))
        assert await store.put_if_absent("k2", orjson.dumps({"v": 2})) is True
    assert await raw_client["kvsessions_test"][namespace].count_documents({}) == 2


@pytest.mark.parametrize("suffix", [
    "/db?namespase=x",              # a typo must not be ignored
    "/db?durability=sometimes",
    "/db?connect_timeout=0",
    "/a?database=b",                # two different databases named
    "/bad.name",
])
def test_bad_url_options_are_config_errors(suffix: str) -> None:
    with pytest.raises(ConfigError):
        open_store("mongodb://user:S3cr3t%21%40%23@127.0.0.1:1" + suffix)


async def test_collection_with_a_locale_collation_is_refused(
    namespace: str, raw_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    await raw_client.get_default_database().create_collection(
        namespace, collation={"locale": "en", "strength": 2})
    with pytest.raises(ConfigError, match="collation"):
        await MongoDBStore(mongodb_url(), namespace=namespace).open()


# ---------------------------------------------------------------------- errors

async def test_unreachable_server_is_store_unavailable_with_password_masked() -> None:
    url = f"mongodb://kv:S3cr3t%21%40%23@127.0.0.1:{free_port()}/db?connect_timeout=1"
    store = open_store(url)
    assert "S3cr3t" not in repr(store) and "***" in repr(store)
    # The bound only keeps a broken timeout from hanging the run; 1 s is the configured one.
    with pytest.raises(StoreUnavailableError) as caught:
        await asyncio.wait_for(store.get("k"), timeout=30)
    message = str(caught.value)
    assert "kv:***@127.0.0.1" in message
    assert "S3cr3t" not in message and "%21%40%23" not in message
    chain: BaseException | None = caught.value
    while chain is not None:
        assert "S3cr3t" not in repr(chain) and "%21%40%23" not in str(chain)
        chain = chain.__cause__


def test_missing_pymongo_is_missing_dependency_error() -> None:
    program = (
        "import sys\n"
        "sys.modules['pymongo'] = None\n"
        "sys.modules['bson'] = None\n"
        "from kvsessions.errors import MissingDependencyError\n"
        "from kvsessions.kv.registry import open_store\n"
        "try:\n"
        "    open_store('mongodb://127.0.0.1/db')\n"
        "except MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "pip install 'kvsessions[mongodb]'" in result.stdout
