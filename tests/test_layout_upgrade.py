"""A Redis namespace written by the release before partitions (everything under one hash tag,
written here by a frozen copy of that release's adapter) is refused with an error naming
``kvsessions upgrade`` until it is moved, and after the upgrade lists and loads the same
sessions, messages, file records and ttls, on Redis and on Redis Cluster."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from kvsessions.documents.models import ChatSession, UploadedFileRecord
from kvsessions.errors import StoreError
from kvsessions.kv.redis import RedisStore
from kvsessions.migration import upgrade_storage
from kvsessions.sessions.storage import SessionStorage
from tests.backends.redis import REDIS_CLUSTER_URL, REDIS_URL, drop_namespaces
from tests.legacy.release_redis import RedisStore as ReleaseRedisStore

URLS = {"redis": REDIS_URL, "redis_cluster": REDIS_CLUSTER_URL}


@pytest.fixture(params=sorted(URLS))
def url(request: Any) -> str:
    return URLS[request.param]


async def write_with_the_release(url: str, namespace: str
                                 ) -> tuple[list[ChatSession], str, int]:
    """Sessions, a file record and a ttl key, written by the release's adapter; the sessions,
    the record's id and the number of keys written."""
    sessions = []
    async with ReleaseRedisStore(url, namespace=namespace) as release:
        storage = SessionStorage(release)
        await storage.initialize()
        for n in range(5):
            session = ChatSession.create("model", metadata={"n": n})
            for i in range(7):
                session.add_message("user", f"message {i} of {n}")
            assert await storage.save_session(session)
            sessions.append(session)
        record = UploadedFileRecord.create("files/a", "uri://a", "a.txt", 3, "text/plain")
        assert await storage.save_file_record(record)
        await release.put("cache:kept", orjson.dumps({"ttl": True}), ttl=600)
        written = len(await release.keys())
    return sessions, record.file_id, written


async def test_a_release_store_is_refused_then_upgraded(url: str) -> None:
    namespace = "up_" + uuid.uuid4().hex[:12]
    try:
        sessions, file_id, written = await write_with_the_release(url, namespace)
        assert written == 5 * 8 + 5 * 2 + 2 + 2  # documents, index entries, a file, state, ttl
        async with RedisStore(url, namespace=namespace) as store:
            with pytest.raises(StoreError, match="kvsessions upgrade"):
                await SessionStorage(store).list_sessions()
            with pytest.raises(StoreError, match="kvsessions upgrade"):
                await store.put("session:new", orjson.dumps({}))
            result = await upgrade_storage(store)
            assert result["layout_keys_moved"] == written
            assert len(await store.keys()) == written
            storage = SessionStorage(store)
            listed = await storage.list_sessions(limit=100)
            assert sorted(s.session_id for s in listed) == sorted(
                s.session_id for s in sessions)
            for session in sessions:
                loaded = await storage.load_session(session.session_id)
                assert loaded is not None
                assert [m.content for m in loaded.messages] == [
                    m.content for m in session.messages]
                assert loaded.metadata == session.metadata
            record = await storage.load_file_record(file_id)
            assert record is not None and record.display_name == "a.txt"
            client: Any = store._client
            assert await client.exists(store._legacy.index) == 0
            kept = store._names("cache:kept").value("cache:kept")
            assert 0 < await client.pttl(kept) <= 600_000  # the ttl moved with the value
            assert (await upgrade_storage(store))["layout_keys_moved"] == 0
        async with RedisStore(url, namespace=namespace) as reopened:
            assert len(await SessionStorage(reopened).list_sessions()) == 5
    finally:
        await drop_namespaces(url, {namespace})
