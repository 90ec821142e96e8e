"""Two processes create, append to, save stale copies of, archive, list and delete the same
sessions for ``SECONDS_PER_SOAK`` seconds times ``--soak`` (issue 11's acceptance of 30 s:
``--soak 3``). Afterwards every surviving session
has exactly the messages its writers were told were stored, and its head counts exactly those;
no deleted session, and no message of one, is readable, listed or left under its prefix.

It runs on SQLite and PostgreSQL (two stores, and 10 s each by default, keep the suite's time
in bounds). Every other store runs the same session protocol through
``tests/test_session_integrity.py`` and ``tests/test_storage.py`` (two processes appending).
Session ids hold ':' so that the encoded key layout is under the same load.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import pytest

from kvsessions.documents.keys import message_prefix
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.sessions.storage import SessionNotFoundError, SessionStorage
from kvsessions.testing import StoreFactory
from tests.backends import ALL as BACKENDS

#: How long the two processes race.
SECONDS_PER_SOAK = 10.0
STORES = ("sqlite", "postgresql")
WORKERS = ("a", "b")
#: Operations and their weights in the mix each worker draws from.
MIX = {"create": 8, "append": 35, "load": 17, "save_copy": 20, "archive": 5, "delete": 5,
       "list": 10}


class Worker:
    """One process's share of the race, and its log: the messages it was told were stored
    (by an append that returned, or a save that returned True) and the sessions it deleted."""

    def __init__(self, name: str, storage: SessionStorage, seed: int) -> None:
        self.name = name
        self.storage = storage
        self.random = random.Random(seed)
        self.known: list[str] = []
        self.held: dict[str, ChatSession] = {}
        self.pending: dict[str, list[str]] = {}  # held copy -> message ids not saved yet
        self.stored: dict[str, list[str]] = {}
        self.deleted: list[str] = []
        self.counts = dict.fromkeys(MIX, 0)
        self.refused = 0
        self.serial = 0

    def content(self) -> str:
        self.serial += 1
        return f"{self.name}:{self.serial}"

    async def run(self, until: float) -> None:
        operations, weights = list(MIX), list(MIX.values())
        while time.monotonic() < until:
            operation = self.random.choices(operations, weights)[0]
            self.counts[operation] += 1
            await getattr(self, operation)()

    async def create(self) -> None:
        session = ChatSession.create("m", metadata={"by": self.name})
        session.session_id = f"{self.name}:{self.serial}:{session.session_id[-6:]}"
        self.serial += 1
        for _ in range(self.random.randint(0, 2)):
            session.add_message("user", self.content())
        assert await self.storage.save_session(session) is True
        self.stored.setdefault(session.session_id, []).extend(
            m.message_id for m in session.messages)
        self.known.append(session.session_id)
        self.held[session.session_id] = session
        self.pending[session.session_id] = []

    async def append(self) -> None:
        if not self.known:
            return
        session_id = self.random.choice(self.known)
        message = ChatMessage.create(session_id, "assistant", self.content())
        try:
            await self.storage.append_message(session_id, message)
        except SessionNotFoundError:
            self.refused += 1
            return
        self.stored.setdefault(session_id, []).append(message.message_id)

    async def load(self) -> None:
        if not self.known:
            return
        session_id = self.random.choice(self.known)
        copy = await self.storage.load_session(session_id)
        if copy is not None:
            self.held[session_id] = copy  # kept, and saved later when it may be stale
            self.pending[session_id] = []

    async def save_copy(self) -> None:
        if not self.held:
            return
        session_id = self.random.choice(list(self.held))
        copy = self.held[session_id]
        for _ in range(self.random.randint(1, 2)):
            self.pending[session_id].append(copy.add_message("user", self.content()).message_id)
        await self._save(session_id, copy)

    async def archive(self) -> None:
        if not self.held:
            return
        session_id = self.random.choice(list(self.held))
        copy = self.held[session_id]
        copy.status = "archived"
        await self._save(session_id, copy)

    async def _save(self, session_id: str, copy: ChatSession) -> None:
        if await self.storage.save_session(copy):
            self.stored.setdefault(session_id, []).extend(self.pending[session_id])
            self.pending[session_id] = []
        else:  # deleted elsewhere: the copy is worthless now
            self.refused += 1
            del self.held[session_id], self.pending[session_id]

    async def delete(self) -> None:
        if not self.known:
            return
        session_id = self.random.choice(self.known)
        await self.storage.delete_session(session_id)
        self.deleted.append(session_id)
        self.known.remove(session_id)

    async def list(self) -> None:
        listed = [s.session_id for s in await self.storage.list_sessions(limit=1000)]
        self.known = [session_id for session_id in listed if session_id not in self.deleted]

    def report(self) -> dict[str, Any]:
        return {"stored": self.stored, "deleted": self.deleted, "counts": self.counts,
                "refused": self.refused}


def _race(make: Any, namespace: str, name: str, barrier: Any, out: str, seconds: float) -> None:
    async def run() -> None:
        async with SessionStorage(make(namespace)) as storage:
            worker = Worker(name, storage, seed=hash((name, namespace)))
            barrier.wait(timeout=60)
            await worker.run(time.monotonic() + seconds)
            Path(out).write_text(json.dumps(worker.report()))

    asyncio.run(run())


async def _check(factory: StoreFactory, reports: list[dict[str, Any]]) -> dict[str, int]:
    stored: dict[str, set[str]] = {}
    for report in reports:
        for session_id, message_ids in report["stored"].items():
            stored.setdefault(session_id, set()).update(message_ids)
    deleted = {session_id for report in reports for session_id in report["deleted"]}
    async with SessionStorage(factory.new()) as storage:
        listed = {s.session_id: s for s in await storage.list_sessions(limit=100_000)}
        assert not deleted & set(listed), "a deleted session is listed"
        for session_id in deleted:
            assert await storage.load_session(session_id) is None
            assert await storage.store.keys(message_prefix(session_id)) == [], session_id
        assert set(listed) == set(stored) - deleted, "a session was lost or came from nowhere"
        messages = 0
        for session_id, head in listed.items():
            loaded = await storage.load_session(session_id)
            assert loaded is not None
            ids = [m.message_id for m in loaded.messages]
            assert set(ids) == stored[session_id], f"{session_id}: messages differ"
            assert all(m.session_id == session_id for m in loaded.messages)
            keys = await storage.store.keys(message_prefix(session_id))
            assert head.message_count == len(ids) == len(keys), f"{session_id}: count"
            messages += len(ids)
        statistics = await storage.statistics()
        assert statistics["total_sessions"] == len(listed)
        assert statistics["total_messages"] == messages
    return {"surviving": len(listed), "deleted": len(deleted), "messages": messages}


@pytest.mark.parametrize("backend", STORES)
def test_two_processes_racing_on_the_same_sessions_keep_them_exact(
    backend: str, request: Any, tmp_path: Path, soak: int
) -> None:
    seconds = SECONDS_PER_SOAK * soak
    factory = BACKENDS[backend](request, tmp_path)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(WORKERS))
    outputs = [tmp_path / f"{name}.json" for name in WORKERS]
    try:
        asyncio.run(_prepare(factory))
        processes = [context.Process(target=_race, args=(
            factory.make, factory.namespace, name, barrier, str(out), seconds))
            for name, out in zip(WORKERS, outputs, strict=True)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=seconds + 120)
            assert process.exitcode == 0, f"a racing process failed ({process.exitcode})"
        reports = [json.loads(out.read_text()) for out in outputs]
        summary = asyncio.run(_check(factory, reports))
        print(f"\n{backend}: {summary}, refused {sum(r['refused'] for r in reports)}, "
              f"operations {[r['counts'] for r in reports]}")
        assert summary["surviving"] > 0 and summary["deleted"] > 0
        assert sum(r["refused"] for r in reports) > 0, "no race was lost: not a race"
    finally:
        if factory.cleanup is not None:
            asyncio.run(factory.cleanup())


async def _prepare(factory: StoreFactory) -> None:
    async with SessionStorage(factory.new()):  # the table exists before the race begins
        pass
