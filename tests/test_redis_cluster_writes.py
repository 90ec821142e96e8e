"""``compare_and_set_with`` on a Redis Cluster when keys lie outside the head's slot: the writes
outside go first, side by side, then one script in the head's slot, then the deletes outside;
a failed call takes back what it created or swapped. Checked by the order of the commands a
spy sees, by the state left, by a reader in this process racing a writer process, and by the
round trips of an append (against single-node Redis, which does it in one script)."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import StoreError, StoreUnavailableError
from kvsessions.kv import redis_scripts
from kvsessions.kv.redis import RedisStore
from kvsessions.sessions.storage import SessionStorage
from tests.backends.redis import REDIS_CLUSTER_URL, REDIS_URL, drop_namespaces, index_raw_key

#: Head changes the writer process makes while this process reads.
CHANGES = 300


def doc(n: int) -> bytes:
    return orjson.dumps({"n": n})


@pytest.fixture
async def cluster() -> AsyncIterator[RedisStore]:
    namespace = "rcw_" + uuid.uuid4().hex[:12]
    async with RedisStore(REDIS_CLUSTER_URL, namespace=namespace) as opened:
        yield opened
    await drop_namespaces(REDIS_CLUSTER_URL, {namespace})


_SCRIPTS = [script for script in vars(redis_scripts).values()
            if isinstance(script, redis_scripts.Script)]
_SCRIPT_NAMES = {script.sha: name for name, script in vars(redis_scripts).items()
                 if isinstance(script, redis_scripts.Script)}


class CommandLog:
    """The commands a store's client sends, as start and end events in the order they
    happened (a command's name: the script's for EVALSHA, plus its first key). On a cluster
    the log sits on each node, where a pipeline's commands for that node leave together.
    Made by ``logged``, which first loads every script on every server (a server that lost
    its cache, or never ran a script, answers NOSCRIPT and gets the EVAL that follows)."""

    def __init__(self, store: RedisStore, patch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int, str, bytes]] = []
        self._numbers = itertools.count()
        client = store._client
        if isinstance(client, RedisCluster):  # nodes have __slots__: patch their class
            one, batch = ClusterNode.execute_command, ClusterNode.execute_pipeline

            async def command(node: Any, *args: Any, **options: Any) -> Any:
                return await self._sent([args], one(node, *args, **options))

            async def pipeline(node: Any, commands: list[Any]) -> Any:
                return await self._sent([command.args for command in commands],
                                        batch(node, commands))

            patch.setattr(ClusterNode, "execute_command", command)
            patch.setattr(ClusterNode, "execute_pipeline", pipeline)
        else:
            run = client.execute_command

            async def single(*args: Any, **options: Any) -> Any:
                return await self._sent([args], run(*args, **options))

            patch.setattr(client, "execute_command", single)

    async def _sent(self, commands: list[tuple[Any, ...]], reply: Any) -> Any:
        named = [(next(self._numbers), *_described(args)) for args in commands]
        self.events += [("start", number, name, first) for number, name, first in named]
        try:
            return await reply
        finally:
            self.events += [("end", number, name, first) for number, name, first in named]

    def commands(self) -> list[str]:
        return [name for event, _, name, _ in self.events if event == "start"]

    def rounds(self) -> list[list[str]]:
        """The commands grouped by round trip: a command started after another one ended
        begins the next round (commands sent side by side share one)."""
        rounds: list[list[str]] = []
        ended = True
        for event, _, name, _ in self.events:
            if event == "end":
                ended = True
            else:
                if ended:
                    rounds.append([])
                    ended = False
                rounds[-1].append(name)
        return rounds

    def span(self, name: str, first: bytes) -> tuple[int, int]:
        """Positions of the start and end events of the command ``name`` on key ``first``."""
        found = [position for position, (_, _, named, key) in enumerate(self.events)
                 if named == name and key == first]
        assert len(found) == 2, (name, first, self.events)
        return found[0], found[1]


def _described(args: tuple[Any, ...]) -> tuple[str, bytes]:
    if args[0] == "EVALSHA":
        return _SCRIPT_NAMES.get(args[1], "EVALSHA"), args[3]
    return str(args[0]), args[1] if len(args) > 1 else b""


async def logged(store: RedisStore, patch: pytest.MonkeyPatch) -> CommandLog:
    client = store._client
    for script in _SCRIPTS:
        if isinstance(client, RedisCluster):
            await client.execute_command("SCRIPT LOAD", script.source,
                                         target_nodes=RedisCluster.PRIMARIES)
        else:
            await client.execute_command("SCRIPT LOAD", script.source)
    return CommandLog(store, patch)


async def test_writes_outside_the_head_slot_end_before_its_script_deletes_follow(
        cluster: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = ["message:h:1", "made:c:y", "entry:a:new", "entry:d:new"]
    await cluster.put_many([(key, doc(0)) for key in fresh])  # their runs in the directory
    await cluster.delete_many(fresh)
    await cluster.put_many([("entry:a:old", doc(0)), ("swap:b:x", doc(1)),
                            ("session:h", doc(2))])
    log = await logged(cluster, monkeypatch)
    assert await cluster.compare_and_set_with(
        "session:h", doc(2), doc(3), create=[("message:h:1", doc(4)), ("made:c:y", doc(5))],
        put=[("entry:a:new", doc(6)), ("entry:d:new", doc(7))], delete=["entry:a:old"],
        swap=[("swap:b:x", doc(1), doc(8))])
    head_start, head_end = log.span("COMPARE_AND_SET_WITH",
                                    cluster._names("session:h").value("session:h"))
    before = [log.span(name, cluster._names(key).value(key) if name != "WRITE_MANY"
                       else cluster._names(key).runs)
              for name, key in (("WRITE", "made:c:y"), ("COMPARE_AND_SET", "swap:b:x"),
                                ("WRITE_MANY", "entry:a:new"), ("WRITE_MANY", "entry:d:new"))]
    assert all(end < head_start for _, end in before)  # rule 1: entries before the head
    delete_start, _ = log.span("DELETE", cluster._names("entry:a:old").index)
    assert delete_start > head_end  # and the old ones only after it
    assert [sorted(names) for names in log.rounds()] == [
        ["COMPARE_AND_SET", "WRITE", "WRITE_MANY", "WRITE_MANY"], ["COMPARE_AND_SET_WITH"],
        ["DELETE"]]
    assert await cluster.keys() == ["entry:a:new", "entry:d:new", "made:c:y", "message:h:1",
                                    "session:h", "swap:b:x"]
    assert await cluster.get_many(["session:h", "swap:b:x"]) == [doc(3), doc(8)]


async def test_a_new_head_adds_its_runs_to_the_directory_beside_the_writes_outside(
        cluster: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await cluster.put("index:e:0", doc(0))  # that run is known
    log = await logged(cluster, monkeypatch)
    assert await cluster.compare_and_set_with(
        "session:n", None, doc(1), create=[("message:n:1", doc(2))],
        put=[("index:e:1", doc(3))])
    assert [sorted(names) for names in log.rounds()] == [
        ["WRITE_MANY", "ZADD"], ["COMPARE_AND_SET_WITH"]]
    # every key found by a scan over the directory (runs of other partitions)
    assert await cluster.keys() == ["index:e:0", "index:e:1", "message:n:1", "session:n"]
    assert [key async for key, _ in cluster.scan("message:")] == ["message:n:1"]


async def test_a_failed_compare_takes_back_what_it_created_and_swapped(
        cluster: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await cluster.put_many([("session:h", doc(1)), ("swap:b:x", doc(2)),
                            ("entry:a:old", doc(3))])
    # the head is not what the caller read
    assert not await cluster.compare_and_set_with(
        "session:h", doc(0), doc(9), create=[("made:c:y", doc(4)), ("message:h:1", doc(5))],
        put=[("entry:a:new", doc(6))], delete=["entry:a:old"],
        swap=[("swap:b:x", doc(2), doc(7))])
    assert await cluster.get_many(["session:h", "swap:b:x", "made:c:y", "message:h:1",
                                   "entry:a:old"]) == [doc(1), doc(2), None, None, doc(3)]
    # a key to create outside the slot is taken: the other creates and the swap go back
    await cluster.put("taken:t:z", doc(8))
    assert not await cluster.compare_and_set_with(
        "session:h", doc(1), doc(9), create=[("made:c:y", doc(4)), ("taken:t:z", doc(5))],
        swap=[("swap:b:x", doc(2), None)])
    assert await cluster.get_many(["session:h", "swap:b:x", "made:c:y", "taken:t:z"]) == [
        doc(1), doc(2), None, doc(8)]
    # a swap outside the slot that does not match: nothing created stays
    assert not await cluster.compare_and_set_with(
        "session:h", doc(1), doc(9), create=[("made:c:y", doc(4))],
        swap=[("swap:b:x", doc(0), doc(7))])
    assert await cluster.get_many(["session:h", "swap:b:x", "made:c:y"]) == [
        doc(1), doc(2), None]
    # a created key someone changed since is not taken back (only what this call wrote)
    original = cluster._changed_together

    async def changed_meanwhile(*args: Any, **options: Any) -> bool:
        await cluster.put("made:c:y", doc(6))
        return await original(*args, **options)

    cluster._changed_together = changed_meanwhile  # type: ignore[method-assign]
    assert not await cluster.compare_and_set_with(
        "session:h", doc(0), doc(9), create=[("made:c:y", doc(4))])
    assert await cluster.get("made:c:y") == doc(6)


async def test_an_error_outside_the_head_slot_takes_back_what_was_created(
        cluster: RedisStore) -> None:
    await cluster.put("session:h", doc(1))
    foreign = await index_raw_key(cluster, "foreign:f:x")
    await cluster._client.hset(foreign, "field", "value")  # GET there: WRONGTYPE
    with pytest.raises(StoreError, match="not a Redis string"):
        await cluster.compare_and_set_with(
            "session:h", doc(1), doc(2), create=[("made:c:y", doc(3))],
            swap=[("foreign:f:x", doc(4), doc(5))])
    assert await cluster.get_many(["session:h", "made:c:y"]) == [doc(1), None]
    # a create whose answer was lost (the connection dropped after the server wrote it)
    original = cluster._registered_outcomes

    calls = itertools.count()

    async def answer_lost(writes: Any) -> list[Any]:  # the first call's; not the undo's
        outcomes = await original(writes)
        return [ConnectionError("lost"), *outcomes[1:]] if next(calls) == 0 else outcomes

    cluster._registered_outcomes = answer_lost  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailableError):
        await cluster.compare_and_set_with("session:h", doc(1), doc(2),
                                           create=[("made:c:y", doc(3))])
    cluster._registered_outcomes = original  # type: ignore[method-assign]
    assert await cluster.get_many(["session:h", "made:c:y"]) == [doc(1), None]


def _writer(namespace: str, ready: Any) -> None:
    """Move a head through ``CHANGES`` values, each with its own entry in another slot."""
    async def run() -> None:
        async with RedisStore(REDIS_CLUSTER_URL, namespace=namespace) as store:
            ready.set()
            for n in range(1, CHANGES + 1):
                assert await store.compare_and_set_with(
                    "session:h", doc(n - 1), doc(n), put=[(f"index:e:{n:06d}", doc(n))],
                    delete=[f"index:e:{n - 1:06d}"])

    asyncio.run(run())


async def test_the_entry_of_the_head_exists_whenever_the_head_does(
        cluster: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rule 1 of kvsessions.sessions.index, across processes: a reader that sees one head
    # before and after reading its entry always finds the entry.
    assert await cluster.compare_and_set_with("session:h", None, doc(0),
                                              put=[("index:e:000000", doc(0))])
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    writer = context.Process(target=_writer, args=(cluster.namespace, ready))
    writer.start()
    try:
        assert await asyncio.to_thread(ready.wait, 60)
        checked = 0
        while writer.is_alive() or checked == 0:
            head = await cluster.get("session:h")
            assert head is not None
            n = orjson.loads(head)["n"]
            entry = await cluster.get(f"index:e:{n:06d}")
            if await cluster.get("session:h") == head:
                assert entry == doc(n), f"head {n} without its entry"
                checked += 1
            if n == CHANGES:
                break
    finally:
        await asyncio.to_thread(writer.join, 60)
    assert writer.exitcode == 0
    assert checked > 0
    assert await cluster.keys("index:") == [f"index:e:{CHANGES:06d}"]


@pytest.mark.parametrize("url", [REDIS_URL, REDIS_CLUSTER_URL], ids=["redis", "redis_cluster"])
async def test_round_trips_of_an_append(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The floor of an append to a session with two index entries (all sessions, status):
    # single-node Redis reads the head and runs one script; a cluster reads the head, puts
    # the new entries (two slots, side by side), runs one script in the session's slot
    # (head and message), deletes the old entries (side by side) and reads the head again
    # (rule 3 of kvsessions.sessions.index).
    namespace = "rcw_" + uuid.uuid4().hex[:12]
    try:
        async with RedisStore(url, namespace=namespace) as store:
            storage = SessionStorage(store)
            session = ChatSession.create("model")
            session.add_message("user", "first")
            assert await storage.save_session(session)
            await storage.append_message(session.session_id, ChatMessage.create(
                session.session_id, "user", "second"))  # runs and scripts known now
            log = await logged(store, monkeypatch)
            await storage.append_message(session.session_id, ChatMessage.create(
                session.session_id, "user", "third"))
            if url == REDIS_URL:
                assert log.rounds() == [["GET"], ["COMPARE_AND_SET_WITH"]]
            else:
                assert [sorted(names) for names in log.rounds()] == [
                    ["GET"], ["WRITE_MANY", "WRITE_MANY"], ["COMPARE_AND_SET_WITH"],
                    ["DELETE", "DELETE"], ["GET"]]
            loaded = await storage.load_session(session.session_id)
            assert loaded is not None and loaded.message_count == 3
    finally:
        await drop_namespaces(url, {namespace})
