"""``load_message_documents``: a session's messages as documents, the same messages, in the same
order and under the same damaged-data policy as ``load_messages``; ``load_messages_as``: the
same documents, each converted as it is read."""

from __future__ import annotations

import logging

import orjson
import pytest

from kvsessions.documents.codec import message_to_document
from kvsessions.documents.keys import message_key
from kvsessions.errors import ValidationError
from kvsessions.sessions.message_documents import load_message_documents, load_messages_as
from kvsessions.sessions.storage import SessionStorage
from tests.test_message_edits import below_validation, plant_damaged, stored_session


async def test_documents_are_the_messages_load_messages_reads(storage: SessionStorage) -> None:
    session = await stored_session(storage, 5)
    sid = session.session_id
    every = [message_to_document(message) for message in await storage.load_messages(sid)]
    assert [document["content"] for document in every] == ["m0", "m1", "m2", "m3", "m4"]
    assert await load_message_documents(storage, sid) == every
    assert await load_message_documents(storage, sid, limit=2) == every[-2:]
    assert await load_message_documents(storage, sid, limit=9) == every
    assert await load_message_documents(storage, sid, limit=0) == []
    assert await load_message_documents(storage, "no-such-session") == []


async def test_a_damaged_document_raises_or_is_skipped_and_reported(
        storage: SessionStorage, caplog: pytest.LogCaptureFixture) -> None:
    session = await stored_session(storage, 3)
    sid = session.session_id
    _, key = await plant_damaged(storage, sid)  # the latest
    with pytest.raises(ValidationError, match=key):
        await load_message_documents(storage, sid)
    with pytest.raises(ValidationError, match=key):
        await load_message_documents(storage, sid, limit=1)
    reported: list[str] = []
    skipping = SessionStorage(storage.store, on_damaged="skip", on_damaged_report=reported.append)
    with caplog.at_level(logging.WARNING, logger="kvsessions"):
        window = await load_message_documents(skipping, sid, limit=2)
    assert [document["content"] for document in window] == ["m1", "m2"]  # read on past it
    assert reported == [key]
    every = await load_message_documents(storage, sid, on_damaged="skip")
    assert [document["content"] for document in every] == ["m0", "m1", "m2"]


async def test_a_document_with_a_field_the_schema_refuses_is_damaged_here_too(
        storage: SessionStorage) -> None:
    session = await stored_session(storage, 2)
    sid, first = session.session_id, session.messages[0]
    key = message_key(sid, first.message_id)
    extra = {**message_to_document(first), "extra": 1}
    await below_validation(storage).put(key, orjson.dumps(extra))
    with pytest.raises(ValidationError, match=key):
        await storage.load_messages(sid)
    with pytest.raises(ValidationError, match=key):
        await load_message_documents(storage, sid)
    kept = await load_message_documents(storage, sid, on_damaged="skip")
    assert [document["content"] for document in kept] == ["m1"]


async def test_load_messages_as_converts_each_document_of_the_same_read(
        storage: SessionStorage) -> None:
    session = await stored_session(storage, 4)
    sid = session.session_id
    every = await load_message_documents(storage, sid)
    converted: list[str] = []

    def content(document: dict[str, object]) -> str:
        converted.append(str(document["message_id"]))
        return str(document["content"])

    assert await load_messages_as(storage, sid, content) == ["m0", "m1", "m2", "m3"]
    assert converted == [document["message_id"] for document in every]
    assert await load_messages_as(storage, sid, content, limit=2) == ["m2", "m3"]
    _, key = await plant_damaged(storage, sid)  # the latest: skipped, never converted
    converted.clear()
    assert await load_messages_as(storage, sid, content, on_damaged="skip") == [
        "m0", "m1", "m2", "m3"]
    assert len(converted) == 4
    with pytest.raises(ValidationError, match=key):
        await load_messages_as(storage, sid, content, limit=1)
