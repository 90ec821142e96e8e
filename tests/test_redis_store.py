"""What the conformance suite cannot see of RedisStore: its layout in the server, the index kept
clean of expired keys, Cluster slots, clients handed in, options, errors and secrets."""

from __future__ import annotations

import asyncio
import importlib
import sys
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from kvsessions.errors import (
    ConfigError,
    KVSessionsError,
    MissingDependencyError,
    StoreUnavailableError,
)
from kvsessions.kv.base import KeyRange
from kvsessions.kv.redis import RedisStore
from kvsessions.kv.redis_layout import PartitionNames, partition_names
from kvsessions.kv.registry import open_store
from tests.backends.redis import REDIS_CLUSTER_URL, REDIS_URL, drop_namespaces

PASSWORD = "S3cr3t!@#"
QUOTED_PASSWORD = "S3cr3t%21%40%23"
URLS = {"redis": REDIS_URL, "redis_cluster": REDIS_CLUSTER_URL}


def doc(n: int) -> bytes:
    return orjson.dumps({"n": n})


@pytest.fixture(params=sorted(URLS))
def url(request: Any) -> str:
    return URLS[request.param]


@pytest.fixture
async def store(url: str) -> AsyncIterator[RedisStore]:
    namespace = "rt_" + uuid.uuid4().hex[:12]
    async with RedisStore(url, namespace=namespace) as opened:
        yield opened
    await drop_namespaces(url, {namespace})


async def index_members(store: RedisStore) -> list[str]:
    members = await store._client.zrange(names(store).index, 0, -1)
    return [member.decode() for member in members]


def assert_no_secret(error: BaseException) -> None:
    text = "".join(traceback.format_exception(error)) + repr(error)
    for secret in (PASSWORD, QUOTED_PASSWORD, "S3cr3t"):
        assert secret not in text


# ---------------------------------------------------------------- layout


def names(store: RedisStore, partition: str = "") -> PartitionNames:
    """The names of a partition of the store (keys without ':' are in partition "")."""
    return partition_names(store.namespace, partition)


async def test_layout_keys_carry_their_partition_tag(store: RedisStore) -> None:
    await store.put("session:1", doc(1))
    await store.put("message:1:a", doc(2), ttl=60)
    tag = f"{{{store.namespace}:1}}"
    client = store._client
    assert await client.get(f"kvs:{tag}:v:session:1".encode()) == doc(1)
    assert await client.zrange(names(store, "1").index, 0, -1) == [b"message:1:a", b"session:1"]
    assert await client.zscore(names(store, "1").expiry, b"message:1:a") is not None
    assert await client.smembers(names(store, "1").runs) == {b"session:1", b"message:1:"}
    assert await client.zrange(store._directory, 0, -1) == [b"message:1:", b"session:1"]
    assert await store.delete_many(["session:1", "message:1:a"]) == 2
    assert await client.exists(names(store, "1").index, names(store, "1").expiry) == 0


async def test_one_session_shares_a_slot_and_sessions_spread() -> None:
    namespace = "rt_" + uuid.uuid4().hex[:12]
    async with RedisStore(REDIS_CLUSTER_URL, namespace=namespace) as store:
        client: Any = store._client
        keys = ["session:s{x}", "message:s{x}:1", "message:s{x}:2", "session-state:s{x}"]
        await store.put_many([(key, doc(1)) for key in keys])
        partition = names(store, "s{x}")
        slot_names = [partition.index, partition.expiry, partition.runs,
                      *[partition.value(key) for key in keys]]
        slots = {await client.execute_command("CLUSTER KEYSLOT", name) for name in slot_names}
        assert len(slots) == 1
        nodes = set()
        for i in range(30):
            slot = await client.execute_command("CLUSTER KEYSLOT", names(store, f"s{i}").index)
            nodes.add(client.get_node_from_key(names(store, f"s{i}").index).name)
            assert isinstance(slot, int)
        assert len(nodes) == 3  # 30 sessions reach every node of the 3-node cluster
    await drop_namespaces(REDIS_CLUSTER_URL, {namespace})


async def test_put_many_and_delete_many_over_many_partitions(store: RedisStore) -> None:
    items = [(f"message:s{n}:{i}", doc(i)) for n in range(40) for i in range(3)]
    items += [(f"session:s{n}", doc(n)) for n in range(40)]
    await store.put_many(items)
    assert await store.keys() == sorted(key for key, _ in items)
    assert len(await store._client.zrange(store._directory, 0, -1)) == 80  # two runs a session
    await store.put_many([(key, doc(7)) for key, _ in items])  # runs known: no second pass
    assert {value for _, value in await collect_all(store)} == {doc(7)}
    assert await store.delete_many([key for key, _ in items] + ["session:none"]) == len(items)
    assert await store.keys() == []


async def collect_all(store: RedisStore) -> list[tuple[str, bytes]]:
    return [item async for item in store.scan()]


async def test_compare_and_set_with_over_partitions_registers_runs(store: RedisStore) -> None:
    # A head, a key to create in its partition, entries to put in other partitions (runs the
    # directory does not hold yet): on one server one script, on a cluster (keys in other
    # slots) the puts outside first, then one script in the head's slot, so only the single
    # server promises atomicity, and a cluster only for the head's own partition.
    assert store.atomic_compare_and_set_with is not store._cluster
    assert store.atomic_with("session:7", ["message:7:a", "session-state:7"])
    assert store.atomic_with("session:7", ["entry:p:x"]) is not store._cluster
    await store.put("entry:old:x", doc(0))
    assert await store.compare_and_set_with(
        "session:7", None, doc(1), create=[("message:7:a", doc(2))],
        put=[("entry:p:x", doc(3)), ("other:q:y", doc(4))], delete=["entry:old:x"])
    assert await store.keys("") == ["entry:p:x", "message:7:a", "other:q:y", "session:7"]
    assert [key async for key, _ in store.scan("other:")] == ["other:q:y"]
    directory = await store._client.zrange(store._directory, 0, -1)
    assert {b"message:7:", b"entry:p:", b"other:q:"} <= set(directory)
    # a key to create that is taken fails the call, and nothing changes
    assert not await store.compare_and_set_with(
        "session:7", doc(1), doc(5), create=[("message:7:a", doc(6))],
        put=[("entry:r:z", doc(7))])
    assert await store.get("session:7") == doc(1)
    # a put outside the head's slot is stored whatever the outcome (the contract's order)
    assert (await store.get("entry:r:z") is None) is not store._cluster


async def test_one_scan_page_across_runs_skips_deleted_ones(store: RedisStore) -> None:
    await store.put_many([(f"session:{n}", doc(n)) for n in range(10)])
    await store.delete_many(["session:1", "session:2"])  # their directory entries stay
    items, last = await store._scan_page(KeyRange("session:", True, "session;"), False, 5)
    assert [key for key, _ in items] == [f"session:{n}" for n in (0, 3, 4, 5, 6)]
    assert last == "session:6"
    items, last = await store._scan_page(KeyRange("session:6", False, "session;"), False, 5)
    assert [key for key, _ in items] == ["session:7", "session:8", "session:9"]
    assert last is None


# ---------------------------------------------------------------- expiry and the index


async def test_expired_members_are_never_seen_and_leave_the_index(store: RedisStore) -> None:
    store.scan_batch_size = 3
    await store.put_many([(f"k{i:02d}", doc(i)) for i in range(0, 12, 2)])
    await store.put_many([(f"k{i:02d}", doc(i)) for i in range(1, 12, 2)], ttl=0.2)
    await store.put("k99", doc(99), ttl=0.2)
    await asyncio.sleep(0.4)
    assert len(await index_members(store)) == 13  # nothing swept yet: no ttl write since
    live = [f"k{i:02d}" for i in range(0, 12, 2)]
    assert await store.keys() == live
    assert await index_members(store) == live
    assert await store._client.zcard(names(store).expiry) == 7  # the sweep clears these later


async def test_ttl_writes_sweep_expired_members_without_a_scan(store: RedisStore) -> None:
    await store.put_many([(f"old{i}", doc(i)) for i in range(5)], ttl=0.2)
    await store.put("forever", doc(0))
    await asyncio.sleep(0.4)
    await store.put("fresh", doc(1), ttl=60)
    assert await index_members(store) == ["forever", "fresh"]
    members = await store._client.zrange(names(store).expiry, 0, -1)
    assert members == [b"fresh"]


async def test_a_key_reput_without_ttl_survives_the_sweep(store: RedisStore) -> None:
    await store.put("k", doc(1), ttl=0.2)
    await store.put("k", doc(2))
    await asyncio.sleep(0.4)
    await store.put("other", doc(3), ttl=60)  # sweeps "k"'s old expiry entry
    assert await index_members(store) == ["k", "other"]
    assert await store.keys() == ["k", "other"]
    assert await store._client.zrange(names(store).expiry, 0, -1) == [b"other"]


async def test_concurrent_reput_during_index_cleanup_stays_indexed(store: RedisStore) -> None:
    # One run ("r:x:"), so the scan reads its partition's index page by page.
    await store.put("r:x:a", doc(0))
    await store.put("r:x:b", doc(1), ttl=0.2)
    await store.put("r:x:c", doc(2))
    await asyncio.sleep(0.4)
    original = store._read
    reput_done = False

    async def page_then_reput(*args: Any) -> Any:
        nonlocal reput_done
        reply = await original(*args)
        if not reput_done:
            # The page has read "b" as gone; another writer puts it back before the cleanup.
            reput_done = True
            await store.put("r:x:b", doc(5))
        return reply

    store._read = page_then_reput  # type: ignore[method-assign]
    seen = await store.keys("r:x:")
    store._read = original  # type: ignore[method-assign]
    assert reput_done
    assert seen == ["r:x:a", "r:x:c"]  # read before the re-put
    members = await store._client.zrange(names(store, "x").index, 0, -1)
    assert members == [b"r:x:a", b"r:x:b", b"r:x:c"]
    assert await store.keys() == ["r:x:a", "r:x:b", "r:x:c"]
    assert await store.get("r:x:b") == doc(5)


async def test_put_if_absent_over_an_expired_key(store: RedisStore) -> None:
    await store.put("k", doc(1), ttl=0.2)
    await asyncio.sleep(0.4)
    assert await store.put_if_absent("k", doc(2), ttl=60) is True
    assert await store.keys() == ["k"]
    assert await store.get("k") == doc(2)


# ---------------------------------------------------------------- batches


async def test_batches_larger_than_batch_size_stay_whole(url: str) -> None:
    namespace = "rt_" + uuid.uuid4().hex[:12]
    async with RedisStore(url, namespace=namespace, batch_size=3) as store:
        items = [(f"k{i:02d}", doc(i)) for i in range(10)]
        await store.put_many(items)
        await store.put_many([(f"t{i:02d}", doc(i)) for i in range(10)], ttl=60)
        assert [item async for item in store.scan("k")] == items
        assert len(await store.keys("t")) == 10
        assert await store.delete_many([f"k{i:02d}" for i in range(10)] + ["t00"]) == 11
        assert await store.keys() == [f"t{i:02d}" for i in range(1, 10)]
    await drop_namespaces(url, {namespace})


async def test_more_concurrent_calls_than_connections(url: str) -> None:
    namespace = "rt_" + uuid.uuid4().hex[:12]
    async with RedisStore(url, namespace=namespace, max_connections=2) as store:
        await asyncio.gather(*(store.put(f"k{i:03d}", doc(i)) for i in range(60)))
        values = await asyncio.gather(*(store.get(f"k{i:03d}") for i in range(60)))
        assert values == [doc(i) for i in range(60)]
    await drop_namespaces(url, {namespace})


async def test_scripts_reload_after_the_server_forgets_them() -> None:
    namespace = "rt_" + uuid.uuid4().hex[:12]
    async with RedisStore(REDIS_CLUSTER_URL, namespace=namespace) as store:
        # The cluster is this project's own (scripts/redis-cluster.sh): safe to flush.
        await store._client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
        await store.put("k", doc(1))
        assert await store.put_if_absent("k", doc(2)) is False
        assert await store.delete("k") is True
    await drop_namespaces(REDIS_CLUSTER_URL, {namespace})


# ---------------------------------------------------------------- clients handed in


async def test_a_client_handed_in_stays_open() -> None:
    client = Redis.from_url(REDIS_URL)
    namespace = "rt_" + uuid.uuid4().hex[:12]
    try:
        async with open_store(REDIS_URL, client=client, namespace=namespace) as store:
            await store.put("k", doc(1))
        assert await client.ping() is True
        async with RedisStore(client=client, namespace=namespace) as again:
            assert await again.get("k") == doc(1)
            assert "client=<given>" in repr(again)
        assert await client.get(f"kvs:{{{namespace}:}}:v:k".encode()) == doc(1)
    finally:
        await drop_namespaces(REDIS_URL, {namespace})
        await client.aclose()


async def test_a_cluster_client_handed_in_stays_open() -> None:
    client = RedisCluster.from_url(REDIS_CLUSTER_URL.replace("redis+cluster://", "redis://"))
    namespace = "rt_" + uuid.uuid4().hex[:12]
    try:
        async with RedisStore(client=client, namespace=namespace) as store:
            await store.put_many([("a", doc(1)), ("b", doc(2))])
            assert await store.keys() == ["a", "b"]
        assert await client.ping() is True
    finally:
        await drop_namespaces(REDIS_CLUSTER_URL, {namespace})
        await client.aclose()


async def test_a_client_decoding_to_str_is_refused() -> None:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ConfigError, match="decode_responses=False"):
            await RedisStore(client=client).open()
        assert await client.ping() is True
    finally:
        await client.aclose()


# ---------------------------------------------------------------- options


def test_url_options() -> None:
    store = RedisStore("redis://127.0.0.1:6379/3?namespace=app&batch_size=7&socket_timeout=2"
                       "&connect_timeout=1.5&max_connections=9&durability=strict")
    assert store.namespace == "app"
    assert store.scan_batch_size == 7
    assert (store._socket_timeout, store._connect_timeout) == (2.0, 1.5)
    assert store._max_connections == 9
    assert store._durability == "strict"
    assert store._cluster is False
    assert RedisStore("redis://127.0.0.1:7000?cluster=true")._cluster is True
    assert RedisStore("redis+cluster://127.0.0.1:7000")._cluster is True
    keyword = RedisStore("redis://127.0.0.1/0?namespace=url", namespace="kw", batch_size=5)
    assert (keyword.namespace, keyword.scan_batch_size) == ("kw", 5)


@pytest.mark.parametrize("bad", [
    "redis://127.0.0.1/0?nmespace=typo",
    "redis://127.0.0.1/0?durability=maybe",
    "redis://127.0.0.1/0?batch_size=0",
    "redis://127.0.0.1/0?socket_timeout=-1",
    "redis://127.0.0.1/0?namespace=a-b",
    "redis://127.0.0.1/zero",
])
async def test_bad_options_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        await RedisStore(bad).open()


async def test_cluster_has_only_database_zero() -> None:
    with pytest.raises(ConfigError, match="database 0"):
        await RedisStore("redis+cluster://127.0.0.1:7000/2").open()


# ---------------------------------------------------------------- durability


async def test_strict_durability_refuses_a_server_without_appendonly(url: str) -> None:
    with pytest.raises(ConfigError, match="appendonly") as caught:
        await RedisStore(url, durability="strict").open()
    assert "appendonly no" in str(caught.value)


async def test_strict_durability_says_when_config_is_disabled() -> None:
    class NoConfigRedis(Redis):
        async def execute_command(self, *args: Any, **options: Any) -> Any:
            if str(args[0]).upper().startswith("CONFIG"):
                raise ResponseError("unknown command 'CONFIG'")
            return await super().execute_command(*args, **options)

    client = NoConfigRedis.from_url(REDIS_URL)
    try:
        with pytest.raises(ConfigError, match="CONFIG GET is disabled"):
            await RedisStore(client=client, durability="strict").open()
        # A namespace of its own: the shared server's default one may hold anything.
        namespace = "rt_" + uuid.uuid4().hex[:12]
        async with RedisStore(client=client, durability="normal", namespace=namespace) as store:
            assert await store.get("nothing") is None
    finally:
        await client.aclose()


# ---------------------------------------------------------------- errors and secrets


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_unreachable_server_names_the_url_without_its_password(scheme: str) -> None:
    url = f"{scheme}://:{QUOTED_PASSWORD}@127.0.0.1:1"
    store = RedisStore(url, connect_timeout=1)
    with pytest.raises(StoreUnavailableError) as caught:
        await store.put("k", doc(1))
    assert f"{scheme}://:***@127.0.0.1:1" in str(caught.value)
    assert_no_secret(caught.value)
    assert "***" in repr(store) and "S3cr3t" not in repr(store)


async def test_a_server_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept and say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        store = RedisStore(f"redis://:{QUOTED_PASSWORD}@127.0.0.1:{port}/0",
                           socket_timeout=0.3, connect_timeout=0.3)
        with pytest.raises(StoreUnavailableError, match="unavailable") as caught:
            await store.open()
        assert_no_secret(caught.value)
    finally:
        server.close()


async def test_bad_credentials_do_not_show_the_password() -> None:
    url = REDIS_URL.replace("redis://", f"redis://nobody:{QUOTED_PASSWORD}@", 1)
    with pytest.raises(StoreUnavailableError, match="nobody:\\*\\*\\*@") as caught:
        await RedisStore(url).open()
    assert_no_secret(caught.value)


async def test_server_errors_become_store_errors(store: RedisStore) -> None:
    await store._client.set(names(store).index + b"-not", b"x")
    await store._client.delete(names(store).index)
    await store._client.set(names(store).index, b"not a sorted set")  # broken by someone else
    with pytest.raises(KVSessionsError, match="WRONGTYPE") as caught:
        await store.put("k", doc(1))
    assert not isinstance(caught.value, StoreUnavailableError)
    await store._client.delete(names(store).index, names(store).index + b"-not")


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "redis" or n.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "kvsessions.kv.redis")
    fresh = importlib.import_module("kvsessions.kv.redis")
    assert fresh is not sys.modules.get("kvsessions.kv.memory")
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvsessions\[redis\]'"):
        fresh.RedisStore("redis://127.0.0.1:6379/0")
    with pytest.raises(ImportError):
        open_store("redis://127.0.0.1:6379/0")


async def test_one_put_many_larger_than_a_script_slice(store: RedisStore) -> None:
    store.scan_batch_size = 1200  # one chunk of 1100 items: the cluster script slices by 500
    items = [(f"big{i:05d}", doc(i)) for i in range(1100)]
    await store.put_many(items)
    assert [item async for item in store.scan("big")] == items
    assert await store._client.zcard(names(store).index) == 1100
