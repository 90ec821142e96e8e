"""Issue 12 acceptance: two processes append to, archive and un-archive (some setting
``updated_at`` back), delete and re-create the same sessions for a bounded number of
operations each; afterwards every listing (all, per status) and every chain of pages is
exactly the stored heads in order, and every head's index entries are stored. Runs on every
store whose data two processes share."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kvsessions.documents.codec import session_to_document
from kvsessions.documents.keys import encode_id
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import SessionNotFoundError
from kvsessions.sessions.index import head_entries
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from tests.backends import ALL as BACKENDS

STORES = ("file", "sqlite", "postgresql", "mongodb", "redis", "redis_cluster")
SESSION_IDS = [f"shared:{n}" for n in range(6)]
#: Operations each process runs, times ``--soak`` (a bound on the race, not a timing).
OPERATIONS = 250


def _race(make: Any, namespace: str, seed: int, barrier: Any, operations: int) -> None:
    async def run() -> None:
        rng = random.Random(seed)
        async with SessionStorage(make(namespace)) as storage:
            barrier.wait(timeout=60)
            for _ in range(operations):
                session_id = rng.choice(SESSION_IDS)
                operation = rng.choices(["append", "archive", "set_back", "recreate"],
                                        [10, 4, 2, 1])[0]
                try:
                    if operation == "append":
                        await storage.append_message(
                            session_id, ChatMessage.create(session_id, "user", "x"))
                    elif operation == "recreate":
                        await storage.delete_session(session_id)
                        await _create(storage, session_id)
                    else:
                        loaded = await storage.load_session(session_id, last_messages=0)
                        if loaded is None:
                            continue
                        loaded.status = rng.choice(["active", "archived"])
                        if operation == "set_back":
                            loaded.updated_at -= timedelta(seconds=rng.randint(0, 2))
                        await storage.save_session(loaded)
                except SessionNotFoundError:
                    pass  # deleted by the other process meanwhile

    asyncio.run(run())


async def _create(storage: SessionStorage, session_id: str) -> None:
    session = ChatSession.create("m")
    session.session_id = session_id
    await storage.save_session(session)


async def _prepare(factory: StoreFactory) -> None:
    async with SessionStorage(factory.new()) as storage:
        for session_id in SESSION_IDS:
            await _create(storage, session_id)


async def _check(factory: StoreFactory) -> int:
    async with SessionStorage(factory.new()) as storage:
        heads = [head async for head in storage.iter_sessions()]
        keys = set(await storage.store.keys("index:"))
        for head in heads:
            assert head_entries(session_to_document(head)) <= keys, head.session_id
        for status in (None, "active", "archived"):
            chosen = [h for h in heads if status is None or h.status == status]
            chosen.sort(key=lambda s: (s.updated_at, encode_id(s.session_id)), reverse=True)
            expected = [h.session_id for h in chosen]
            assert [s.session_id for s in await storage.list_sessions(status)] == expected
            found: list[str] = []
            cursor: str | None = None
            while True:
                page, cursor = await storage.page_sessions(status, 2, cursor)
                found += [s.session_id for s in page]
                if cursor is None:
                    break
            assert found == expected, status
        return len(heads)


@pytest.mark.parametrize("backend", STORES)
def test_two_processes_leave_listings_that_match_the_heads(
    backend: str, request: Any, tmp_path: Path, soak: int
) -> None:
    factory = BACKENDS[backend](request, tmp_path)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    try:
        asyncio.run(_prepare(factory))
        processes = [context.Process(target=_race, args=(
            factory.make, factory.namespace, seed, barrier, OPERATIONS * soak))
            for seed in (1, 2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=600 * soak)
            assert process.exitcode == 0, f"a racing process failed ({process.exitcode})"
        assert asyncio.run(_check(factory)) > 0
    finally:
        if factory.cleanup is not None:
            asyncio.run(factory.cleanup())
