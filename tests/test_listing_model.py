"""Issue 12, item 6, on every backend in tests/backends: rounds of concurrent saves, appends,
archives (some setting ``updated_at`` back), un-archives, deletes and listings, through two
storages on one namespace, against a model of which sessions exist with which status. After
every round, every listing and every chain of pages must be exactly the heads as stored, in
order; a listing run during a round never shows a session twice nor one that existed neither
before nor after the round."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from kvsessions.documents.codec import session_to_document
from kvsessions.documents.keys import encode_id
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.sessions.index import head_entries
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory

Pair = tuple[SessionStorage, SessionStorage]
SESSION_IDS = [f"s:{n}" for n in range(10)] + ["s%10", "s:%:11"]
ROUNDS = 25


@pytest.fixture
async def pair(store_factory: StoreFactory) -> AsyncIterator[Pair]:
    first = store_factory.new()
    second = store_factory.new() if store_factory.persistent else first
    storages = (SessionStorage(first), SessionStorage(second))
    try:
        yield storages
    finally:
        for storage in storages:
            await storage.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()


class Model:
    """The sessions that exist and their status; the operations of one round touch distinct
    sessions, so the outcome of a round does not depend on how its operations interleave."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.status: dict[str, str] = {}

    def operations(self) -> list[tuple[str, str]]:
        chosen = self.random.sample(SESSION_IDS, self.random.randint(1, 5))
        plan = []
        for session_id in chosen:
            if session_id not in self.status:
                plan.append(("create", session_id))
            else:
                plan.append((self.random.choice(
                    ["append", "append", "archive", "unarchive", "set_back", "delete"]),
                    session_id))
        return plan

    async def run(self, storage: SessionStorage, operation: str, session_id: str) -> None:
        if operation == "create":
            session = ChatSession.create("m")
            session.session_id = session_id
            session.add_message("user", "hi").session_id = session_id
            assert await storage.save_session(session)
            self.status[session_id] = "active"
        elif operation == "append":
            await storage.append_message(session_id, ChatMessage.create(session_id, "user",
                                                                        "more"))
        elif operation == "delete":
            assert await storage.delete_session(session_id)
            del self.status[session_id]
        else:
            loaded = await storage.load_session(session_id, last_messages=1)
            assert loaded is not None
            status = "active" if operation == "unarchive" else "archived"
            loaded.status = status
            if operation == "set_back":
                loaded.updated_at -= timedelta(minutes=self.random.randint(0, 3))
            assert await storage.save_session(loaded)
            self.status[session_id] = status


async def expected_order(storage: SessionStorage, model: Model,
                         status: str | None) -> list[str]:
    heads = []
    for session_id, stored_status in model.status.items():
        loaded = await storage.load_session(session_id, last_messages=0)
        assert loaded is not None and loaded.status == stored_status, session_id
        if status is None or stored_status == status:
            heads.append(loaded)
    heads.sort(key=lambda s: (s.updated_at, encode_id(s.session_id)), reverse=True)
    return [s.session_id for s in heads]


async def check(pair: Pair, model: Model, round_number: int) -> None:
    for status in (None, "active", "archived"):
        expected = await expected_order(pair[0], model, status)
        for storage in pair:
            listed = [s.session_id for s in await storage.list_sessions(status)]
            assert listed == expected, f"round {round_number}, status {status}"
            for limit in (1, 3):
                found: list[str] = []
                cursor: str | None = None
                while True:
                    page, cursor = await storage.page_sessions(status, limit, cursor)
                    found += [s.session_id for s in page]
                    if cursor is None:
                        break
                assert found == expected, f"round {round_number}, pages of {limit}"
        assert await pair[1].count_sessions(status) == len(expected)
    # Every head's current entries are stored: nothing depends on a listing repairing them.
    keys = set(await pair[0].store.keys("index:"))
    for session_id in model.status:
        loaded = await pair[0].load_session(session_id, last_messages=0)
        assert loaded is not None
        assert head_entries(session_to_document(loaded)) <= keys, session_id


@pytest.mark.parametrize("seed", [1, 2])
async def test_listings_match_the_model_under_concurrent_writers(pair: Pair, seed: int) -> None:
    model = Model(seed)
    for round_number in range(ROUNDS):
        before = set(model.status)
        plan = model.operations()
        results = await asyncio.gather(pair[1].list_sessions(), *(
            model.run(pair[index % 2], operation, session_id)
            for index, (operation, session_id) in enumerate(plan)))
        during = [session.session_id for session in results[0]]
        assert len(during) == len(set(during)), "a session listed twice"
        assert set(during) <= before | set(model.status), "a listed session never existed"
        assert set(during) >= before & set(model.status) - {
            session_id for _, session_id in plan}, "an untouched session was missed"
        await check(pair, model, round_number)
