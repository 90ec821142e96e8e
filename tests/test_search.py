"""``search_messages`` and ``KVStore.search_text`` on every backend: the native indexes (SQLite
FTS5, PostgreSQL, MongoDB where the server has text search) find what the scan finds."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator

import orjson
import pytest

from kvsessions.documents.keys import message_key, session_key
from kvsessions.documents.models import ChatSession
from kvsessions.errors import InvalidValueError
from kvsessions.kv.base import KVStore
from kvsessions.kv.text_search import TextIndex, query_words, scan_search
from kvsessions.sessions.search import MessageHit
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory

NOTES = TextIndex("note:", "text")


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[KVStore]:
    store = store_factory.new()
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()


async def _conversation(storage: SessionStorage, *contents: str) -> ChatSession:
    session = ChatSession.create("model-x")
    for i, content in enumerate(contents):
        session.add_message("user" if i % 2 == 0 else "assistant", content)
    await storage.save_session(session)
    return session


def _ids(hits: list[MessageHit]) -> list[str]:
    return [hit.message_id for hit in hits]


async def test_finds_messages_holding_every_word_best_first(storage: SessionStorage) -> None:
    first = await _conversation(storage, "The quick brown fox", "no match here",
                                "fox FOX fox, said the fox")
    second = await _conversation(storage, "a quick note about a fox", "Foxes are not a fox?")
    hits = await storage.search_messages("fox")
    assert sorted(_ids(hits)) == sorted([first.messages[0].message_id,
                                         first.messages[2].message_id,
                                         second.messages[0].message_id,
                                         second.messages[1].message_id])
    assert hits[0].message_id == first.messages[2].message_id  # four times: the best
    assert [hit.rank for hit in hits] == [1, 2, 3, 4]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    best = hits[0]
    assert best.session_id == first.session_id
    assert best.message.content == "fox FOX fox, said the fox"
    assert best.message.role == "user"

    both = await storage.search_messages("Quick fox")
    assert sorted(_ids(both)) == sorted([first.messages[0].message_id,
                                         second.messages[0].message_id])
    assert await storage.search_messages("fox elephant") == []
    assert len(await storage.search_messages("fox", limit=2)) == 2


async def test_one_session_and_one_owner(storage: SessionStorage) -> None:
    mine = await _conversation(storage, "deploy the rocket", "rocket launched")
    theirs = await _conversation(storage, "rocket science")
    within = await storage.search_messages("rocket", session_id=mine.session_id)
    assert sorted(_ids(within)) == sorted(m.message_id for m in mine.messages)
    assert await storage.search_messages("rocket", session_id="no-such-session") == []

    # Owners are in the head (``user_id``); set it in the stored head as the owner API does.
    raw = storage._raw
    head_key = session_key(theirs.session_id)
    head = orjson.loads(await raw.get(head_key) or b"")
    await raw.put(head_key, orjson.dumps({**head, "user_id": "ada"}))
    owned = await storage.search_messages("rocket", user_id="ada")
    assert _ids(owned) == [theirs.messages[0].message_id]
    assert await storage.search_messages("rocket", user_id="bob") == []
    assert _ids(await storage.search_messages("rocket", user_id="ada",
                                              session_id=mine.session_id)) == []


async def test_follows_edits_and_deletions(storage: SessionStorage) -> None:
    session = await _conversation(storage, "alpha beta", "gamma delta")
    edited = session.messages[0]
    key = message_key(session.session_id, edited.message_id)
    document = orjson.loads(await storage._raw.get(key) or b"")
    await storage._raw.put(key, orjson.dumps({**document, "content": "omega beta"}))
    assert await storage.search_messages("alpha") == []
    assert _ids(await storage.search_messages("omega")) == [edited.message_id]
    assert len(await storage.search_messages("beta")) == 1

    other = await _conversation(storage, "gamma rays")
    assert len(await storage.search_messages("gamma")) == 2
    assert await storage.delete_session(session.session_id)
    assert _ids(await storage.search_messages("gamma")) == [other.messages[0].message_id]
    assert await storage.search_messages("omega") == []


@pytest.mark.parametrize("query", ["", "   ", "!?.", " ".join(f"w{i}" for i in range(40))])
async def test_bad_queries_are_refused(storage: SessionStorage, query: str) -> None:
    with pytest.raises(InvalidValueError):
        await storage.search_messages(query)


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.5])
async def test_bad_limits_are_refused(storage: SessionStorage, limit: object) -> None:
    with pytest.raises(InvalidValueError):
        await storage.search_messages("word", limit=limit)  # type: ignore[arg-type]


async def test_native_search_finds_what_the_scan_finds(store: KVStore) -> None:
    """Random documents of a small vocabulary: for every query the store's search (native
    where it has an index) returns exactly the keys the scan returns, and only keys under the
    index's prefix."""
    rng = random.Random(14)
    vocabulary = ["apple", "Berry", "cherry", "date", "elder", "fig", "grape", "honeydew"]
    documents = []
    for i in range(80):
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 9)))
        documents.append((f"note:{i // 20}:{i:03}", orjson.dumps({"text": text, "n": i})))
    documents.append(("other:1", orjson.dumps({"text": "apple cherry"})))
    documents.append(("note:9:no-text", orjson.dumps({"title": "apple"})))
    documents.append(("note:9:not-a-string", orjson.dumps({"text": ["apple"]})))
    await store.put_many(documents)
    for query in ["apple", "berry", "cherry date", "FIG grape honeydew", "elder apple"]:
        terms = query_words(query)
        scanned = await scan_search(store, NOTES, terms, NOTES.prefix, 1000, None)
        searched = await store.search_text(NOTES, query, limit=1000)
        assert sorted(hit.key for hit in searched) == sorted(hit.key for hit in scanned), query
        assert all(hit.key.startswith("note:") for hit in searched)
        within = await store.search_text(NOTES, query, within="note:1:", limit=1000)
        assert sorted(hit.key for hit in within) == sorted(
            hit.key for hit in scanned if hit.key.startswith("note:1:"))
        top = await store.search_text(NOTES, query, limit=3)
        assert len(top) == min(3, len(scanned))
        assert {hit.key for hit in top} <= {hit.key for hit in scanned}


async def test_search_text_refuses_a_prefix_outside_the_index(store: KVStore) -> None:
    with pytest.raises(InvalidValueError):
        await store.search_text(NOTES, "apple", within="other:")
    with pytest.raises(InvalidValueError):
        TextIndex("note:", "a.b")
    with pytest.raises(InvalidValueError):
        TextIndex("", "text")
