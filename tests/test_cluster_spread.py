"""Sessions spread over the nodes of the 3-node Redis Cluster: with 3,000 sessions of 20
messages in a namespace of this test's own, no node holds more than 1.3 times its share of
the namespace's keys (counted per node with a bounded SCAN MATCH, since the cluster is shared).
One session's keys stay in one slot, and loading a session reads that slot only."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis

from kvsessions.documents.keys import message_prefix, session_key
from kvsessions.documents.models import ChatSession
from kvsessions.kv.partitions import partition_of
from kvsessions.kv.redis import RedisStore
from kvsessions.kv.redis_layout import partition_names
from kvsessions.sessions.storage import SessionStorage
from tests.backends.redis import REDIS_CLUSTER_URL, drop_namespaces

SESSIONS, MESSAGES = 3000, 20
#: SCAN calls per node at most: the loop ends even if a shared node holds millions of keys.
_MAX_SCAN_CALLS = 10_000


async def keys_per_node(client: Any, namespace: str) -> dict[str, int]:
    """How many keys of ``namespace`` (``kvs:{ns}:...`` and ``kvs:{ns:P}:...``) each primary
    holds, by SCAN MATCH on each node."""
    counts: dict[str, int] = {}
    pattern = f"kvs:{{{namespace}[:}}]*"
    for node in client.get_primaries():
        cursor, found = 0, 0
        async with Redis(host=node.host, port=node.port) as direct:
            for _ in range(_MAX_SCAN_CALLS):
                cursor, keys = await direct.scan(cursor, match=pattern, count=2000)
                found += len(keys)
                if cursor == 0:
                    break
            else:
                raise AssertionError(f"SCAN of {node.name} did not end in {_MAX_SCAN_CALLS} calls")
        counts[node.name] = found
    return counts


async def test_three_thousand_sessions_spread_over_every_node() -> None:
    namespace = "spread_" + uuid.uuid4().hex[:12]
    try:
        async with RedisStore(REDIS_CLUSTER_URL, namespace=namespace) as store:
            storage = SessionStorage(store)
            await storage.initialize()
            limit = asyncio.Semaphore(32)

            async def save(n: int) -> str:
                session = ChatSession.create("model")
                for i in range(MESSAGES):
                    session.add_message("user", f"message {i} of session {n}")
                async with limit:
                    assert await storage.save_session(session)
                return session.session_id

            ids = await asyncio.gather(*(save(n) for n in range(SESSIONS)))
            counts = await keys_per_node(store._client, namespace)
            total = sum(counts.values())
            share = total / len(counts)
            print(f"\nkeys of {SESSIONS:,} sessions x {MESSAGES} messages per node "
                  f"(total {total:,}, share {share:,.0f}):")
            for name, count in sorted(counts.items()):
                print(f"  {name}: {count:,} keys = {count / share:.3f}x its share")
            assert len(counts) == 3
            assert total >= SESSIONS * (MESSAGES + 1)
            assert max(counts.values()) <= 1.3 * share, counts

            # One session: head, messages and index in its partition's slot, one node.
            sample = ids[0]
            names = partition_names(namespace, partition_of(session_key(sample)))
            assert partition_of(message_prefix(sample) + "x") == partition_of(session_key(sample))
            slots = {store._client.keyslot(name) for name in (
                names.index, names.runs, names.value(session_key(sample)),
                names.value(message_prefix(sample) + "x"))}
            assert len(slots) == 1
            loaded = await storage.load_session(sample)
            assert loaded is not None and len(loaded.messages) == MESSAGES
            assert len(await storage.list_sessions(limit=SESSIONS + 1)) == SESSIONS
    finally:
        await drop_namespaces(REDIS_CLUSTER_URL, {namespace})
