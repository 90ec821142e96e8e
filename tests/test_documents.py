"""Models, the codec, the schemas and ValidatingStore."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from kvsessions.documents import codec
from kvsessions.documents import keys as layout
from kvsessions.documents.ids import uuid7, uuid7_str
from kvsessions.documents.models import ChatMessage, ChatSession, UploadedFileRecord
from kvsessions.documents.validation import load_schema, schema_names, validate_document
from kvsessions.errors import (
    DocumentTooLargeError,
    UnsupportedVersionError,
    ValidationError,
)
from kvsessions.kv.memory import MemoryStore
from kvsessions.wrappers.validating import ValidatingStore

ROOT = Path(__file__).resolve().parents[1]


def sample_session() -> ChatSession:
    session = ChatSession.create("gemini-2.5-flash", metadata={"user": "ada", "n": [1, 2.5]})
    session.add_message("user", "Hello! 😀", {"lang": "en"})
    session.add_message("assistant", "Hi there!")
    return session


def sample_file() -> UploadedFileRecord:
    return UploadedFileRecord.create("files/abc", "https://example.invalid/files/abc",
                                     "report.pdf", 1234, "application/pdf")


# ------------------------------------------------------------------------------ models

def test_session_create_and_add_message() -> None:
    session = sample_session()
    assert session.message_count == 2
    assert [m.role for m in session.messages] == ["user", "assistant"]
    assert all(m.session_id == session.session_id for m in session.messages)
    assert session.updated_at == session.messages[-1].created_at
    assert session.created_at.tzinfo is not None and session.created_at.utcoffset() == timedelta(0)
    assert session.status == "active"


def test_message_ids_are_time_ordered_uuid7() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(u.version == 7 for u in ids)
    assert [str(u) for u in ids] == sorted(str(u) for u in ids)
    assert len(set(ids)) == len(ids)
    messages = [ChatMessage.create("s", "user", str(i)) for i in range(100)]
    assert [m.message_id for m in messages] == sorted(m.message_id for m in messages)
    assert uuid.UUID(messages[0].message_id).version == 7


def test_uuid7_text_is_the_uuid_spelling_and_keeps_the_order() -> None:
    """uuid7_str formats the id itself: the canonical spelling of the same UUID, ordered
    with the ids uuid7 makes around it."""
    made = [uuid7_str() if i % 2 else str(uuid7()) for i in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    for text in made[1::2]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_file_record_expiry() -> None:
    record = sample_file()
    assert not record.expired
    record.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert record.expired


# ------------------------------------------------------------------------------ codec

def test_documents_roundtrip_models() -> None:
    session = sample_session()
    head = codec.session_to_document(session)
    assert head["kind"] == "session" and head["v"] == codec.CURRENT_VERSIONS["session"]
    assert "messages" not in head
    assert head["created_at"].endswith("Z")
    validate_document(head)
    again = codec.document_to_session(codec.decode_document(codec.encode_document(head)))
    assert again == ChatSession(**{**session.__dict__, "messages": []})

    for message in session.messages:
        document = codec.message_to_document(message)
        validate_document(document)
        assert codec.document_to_message(
            codec.decode_document(codec.encode_document(document))) == message

    record = sample_file()
    document = codec.file_to_document(record)
    validate_document(document)
    assert codec.document_to_file(codec.decode_document(codec.encode_document(document))) == record


def test_other_time_zones_are_stored_as_utc() -> None:
    session = sample_session()
    session.created_at = datetime(2026, 1, 2, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    head = codec.session_to_document(session)
    assert head["created_at"] == "2026-01-02T07:00:00Z"
    assert codec.document_to_session(head).created_at == session.created_at


def test_naive_datetime_is_refused() -> None:
    session = sample_session()
    session.updated_at = datetime(2026, 1, 1)
    with pytest.raises(ValidationError, match="updated_at"):
        codec.session_to_document(session)


@pytest.mark.parametrize(
    ("metadata", "field", "error"),
    [
        ({"x": math.nan}, "metadata/x", ValidationError),
        ({"x": [1, math.inf]}, "metadata/x/1", ValidationError),
        ({"x": -math.inf}, "metadata/x", ValidationError),
        ({"s": "\ud800"}, "metadata/s", ValidationError),
        ({"big": 2**64}, "metadata/big", DocumentTooLargeError),
        ({"small": -(2**63) - 1}, "metadata/small", DocumentTooLargeError),
        ({"obj": object()}, "metadata/obj", ValidationError),
        ({"set": {1}}, "metadata/set", ValidationError),
        ({"d": {1: "int key"}}, "metadata/d", ValidationError),
        ({"d": {"\udc00": 1}}, "metadata/d", ValidationError),
        ({"t": (1, 2)}, "metadata/t", ValidationError),
    ],
)
def test_encode_refuses_what_cannot_be_kept(metadata: dict[str, Any], field: str,
                                            error: type[Exception]) -> None:
    session = sample_session()
    session.metadata = metadata
    with pytest.raises(error) as caught:
        codec.encode_document(codec.session_to_document(session), key="session:x")
    assert isinstance(caught.value, ValidationError)
    assert caught.value.path == field
    assert "session:x" in str(caught.value)


def test_encode_refuses_too_deep_and_accepts_the_limit() -> None:
    deep: Any = {}
    for _ in range(98):
        deep = {"d": deep}
    codec.encode_document({"kind": "x", "m": deep})  # 100 levels with the top object
    with pytest.raises(DocumentTooLargeError, match="deeper"):
        codec.encode_document({"kind": "x", "m": {"d": deep}})


def test_encode_keeps_extreme_but_legal_values() -> None:
    document = {"a": 2**63 - 1, "b": -(2**63), "c": 1e308, "d": -0.0, "e": "\u0000😀"}
    decoded = orjson.loads(codec.encode_document(document))
    assert decoded == document and math.copysign(1, decoded["d"]) == -1


@pytest.mark.parametrize(
    ("raw", "error", "text"),
    [
        (b"\xff{}", ValidationError, "not valid JSON"),
        (b"[1]", ValidationError, "not an object"),
        (b'{"v": 1}', ValidationError, "unknown document kind"),
        (b'{"kind": "session"}', ValidationError, "version"),
        (b'{"kind": "session", "v": 999}', UnsupportedVersionError, "newer"),
        (b'{"kind": "session", "v": "1"}', ValidationError, "version"),
    ],
)
def test_decode_raises_typed_errors(raw: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text) as caught:
        codec.decode_document(raw, key="session:k")
    assert "session:k" in str(caught.value)


def test_upcasters_run_one_step_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(codec.CURRENT_VERSIONS, "session", 3)
    monkeypatch.setattr(codec, "_UPCASTERS", {})
    codec.register_upcaster(
        "session", 1, lambda d: {**{k: v for k, v in d.items() if k != "name"}, "v": 2,
                                 "title": d["name"]})
    codec.register_upcaster("session", 2, lambda d: {**d, "v": 3, "tags": []})
    old = {"kind": "session", "v": 1, "name": "t"}
    assert codec.upgrade_document(old) == {"kind": "session", "v": 3, "title": "t", "tags": []}
    assert old == {"kind": "session", "v": 1, "name": "t"}  # the input is not changed
    codec.register_upcaster("session", 2, lambda d: d)  # makes no progress
    with pytest.raises(UnsupportedVersionError, match="did not advance"):
        codec.upgrade_document(old)
    with pytest.raises(UnsupportedVersionError, match="no upcaster"):
        codec.upgrade_document({"kind": "session", "v": 0})


def test_key_layout_sorts_messages_in_conversation_order() -> None:
    session = sample_session()
    keys = [layout.message_key(session.session_id, m.message_id) for m in session.messages]
    assert keys == sorted(keys)
    assert all(k.startswith(layout.message_prefix(session.session_id)) for k in keys)
    assert layout.session_key("s1") == "session:s1" and layout.file_key("f") == "file:f"


# ------------------------------------------------------------------------------ schemas

def test_schema_files_are_valid_draft_2020_12_and_ship_in_the_package() -> None:
    assert schema_names() == ["checkpoint.v1.json", "checkpoint_writes.v1.json", "file.v1.json",
                              "index.v1.json", "message.v1.json", "session.v1.json",
                              "session.v2.json", "state.v1.json"]
    for name in schema_names():
        kind, version = name.split(".")[0], int(name.split(".")[1][1:])
        schema = load_schema(kind, version)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"].endswith("2020-12/schema")
        top_level = ROOT / "schemas" / name
        assert json.loads(top_level.read_text()) == schema


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("session", {"status": "deleted"}, "status"),
        ("session", {"created_at": "2026-01-01"}, "created_at"),
        ("session", {"updated_at": "2026-01-01T10:00:00+02:00"}, "updated_at"),
        ("session", {"message_count": -1}, "message_count"),
        ("session", {"session_id": 5}, "session_id"),
        ("session", {"metadata": []}, "metadata"),
        ("session", {"surprise": 1}, "/"),
        ("message", {"role": "robot"}, "role"),
        ("message", {"content": None}, "content"),
        ("message", {"created_at": "yesterday"}, "created_at"),
        ("file", {"size": -5}, "size"),
        ("file", {"expires_at": "2026-13-01T00:00:00Z"}, "expires_at"),
    ],
)
def test_schema_violations_name_the_field(kind: str, change: dict[str, Any], field: str) -> None:
    session = sample_session()
    document = {
        "session": lambda: codec.session_to_document(session),
        "message": lambda: codec.message_to_document(session.messages[0]),
        "file": lambda: codec.file_to_document(sample_file()),
    }[kind]()
    validate_document(document)
    document.update(change)
    with pytest.raises(ValidationError) as caught:
        validate_document(document, key=f"{kind}:k")
    assert caught.value.path == field
    assert caught.value.key == f"{kind}:k" and caught.value.kind == kind


def test_validation_does_not_change_the_document() -> None:
    document = codec.session_to_document(sample_session())
    before = orjson.dumps(document)
    validate_document(document)
    assert orjson.dumps(document) == before


def test_validation_errors_stay_short_for_huge_documents() -> None:
    document = codec.message_to_document(sample_session().messages[0])
    document["role"] = "x" * 1_000_000
    with pytest.raises(ValidationError) as caught:
        validate_document(document)
    assert len(str(caught.value)) < 400


# ------------------------------------------------------------------------------ ValidatingStore

async def test_validating_store_refuses_invalid_writes_and_keeps_what_was_there() -> None:
    async with ValidatingStore(MemoryStore()) as store:
        session = sample_session()
        good = codec.session_to_document(session)
        key = layout.session_key(session.session_id)
        await store.put_document(key, good)
        bad = {**good, "status": "weird"}
        with pytest.raises(ValidationError, match="status"):
            await store.put(key, orjson.dumps(bad))
        with pytest.raises(ValidationError, match="status"):
            await store.put_many([("session:other", orjson.dumps(good)),
                                  (key, orjson.dumps(bad))])
        with pytest.raises(ValidationError, match="kind"):
            await store.put("no-kind", b'{"a": 1}')
        assert await store.keys() == [key]
        assert await store.get_document(key) == good


async def test_validating_store_refuses_invalid_stored_documents_on_read() -> None:
    inner = MemoryStore()
    async with ValidatingStore(inner) as store:
        good = codec.session_to_document(sample_session())
        await inner.put("session:bad", orjson.dumps({**good, "status": "weird"}))
        await inner.put("session:future", orjson.dumps({**good, "v": 999}))
        with pytest.raises(ValidationError, match="status"):
            await store.get("session:bad")
        with pytest.raises(ValidationError, match="status"):
            await store.get_document("session:bad")
        with pytest.raises(UnsupportedVersionError):
            await store.get_document("session:future")
        with pytest.raises(ValidationError):
            await store.keys()
        with pytest.raises(ValidationError):
            await store.get_many(["session:bad"])


async def test_validating_store_documents_api() -> None:
    async with ValidatingStore(MemoryStore()) as store:
        session = sample_session()
        documents = [(layout.message_key(session.session_id, m.message_id),
                      codec.message_to_document(m)) for m in session.messages]
        await store.put_documents(documents)
        got = [d async for _, d in store.scan_documents(layout.message_prefix(session.session_id))]
        assert got == [d for _, d in documents]
        assert await store.get_documents([documents[1][0], "message:none"]) == [
            documents[1][1], None]


async def test_closing_a_lazily_used_validating_store_closes_the_inner_store(
    tmp_path: Path,
) -> None:
    from kvsessions.kv.registry import open_store
    from kvsessions.sessions.storage import SessionStorage

    inner = open_store(f"sqlite:///{tmp_path}/lazy.db")
    storage = SessionStorage(inner)  # never initialize()d: used lazily
    await storage.save_session(sample_session())
    await storage.close()
    assert inner._state == "closed"
    # and a wrapper that was never used at all still closes what it was given
    untouched = open_store(f"sqlite:///{tmp_path}/untouched.db")
    await untouched.open()
    await ValidatingStore(untouched).close()
    assert untouched._state == "closed"


@pytest.mark.parametrize("kind", [{"a": 1}, ["session"], 7, None, True])
async def test_allow_unknown_kinds_lets_through_a_kind_of_any_json_type(kind: object) -> None:
    store = ValidatingStore(MemoryStore(), allow_unknown_kinds=True)
    value = orjson.dumps({"kind": kind, "x": 1})
    await store.put("other:1", value)
    assert await store.get("other:1") == value
