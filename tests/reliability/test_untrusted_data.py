"""Documents written straight into each backend around kvsessions (with the raw driver, in the
adapter's own layout) never read as missing, as a partial object or as a raw driver exception:
every reader raises one of our errors, naming the key.

Corruptions: invalid UTF-8, JSON that is not an object, truncated or empty JSON, NaN, schema
violations (unknown status or role, a bad or impossible timestamp, a missing field, a wrong
type), an unknown kind, a document of another kind under the key, an unknown future version
(``v: 999``) and other bad versions; each on a session head, a message and a file record.
Readers: ``SessionStorage`` (``load_session``, ``list_sessions``, ``iter_sessions``,
``statistics``, ``load_messages``, ``load_file_record``, ``list_file_records``) and
``ValidatingStore`` (``get``, ``get_many``, ``scan``).

Where a backend cannot hold a corruption at all (JSONB and BSON hold only valid UTF-8 and
parsed JSON; a MongoDB document is always an object), the case is left out for that backend
and counted as "cannot be stored" in the report.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.documents.codec import file_to_document, message_to_document, session_to_document
from kvsessions.documents.keys import file_key, message_key, session_key
from kvsessions.documents.models import ChatMessage, ChatSession, UploadedFileRecord
from kvsessions.errors import (
    KVSessionsError,
    StoreError,
    UnsupportedVersionError,
    ValidationError,
)
from kvsessions.kv.base import KVStore
from kvsessions.kv.redis import RedisStore
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory
from kvsessions.wrappers.validating import ValidatingStore
from tests.backends import ALL
from tests.backends.redis import index_raw_key

RAW_BACKENDS = ("sqlite", "file", "postgresql", "mongodb", "redis", "redis_cluster")
NOT_JSON = object()  # a payload that has no JSON value (bytes a JSON store cannot hold)

#: Per kind: the free-text field, the enum field, the timestamp field.
TEXT_FIELD = {"session": "model", "message": "content", "file": "display_name"}
ENUM_FIELD = {"session": "status", "message": "role"}
TIME_FIELD = {"session": "updated_at", "message": "created_at", "file": "expires_at"}


def report(backend: str, case: str, outcome: str) -> None:
    path = os.environ.get("KVSESSIONS_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": "untrusted", "backend": backend, "case": case,
                                  "outcome": outcome}) + "\n")


# ---------------------------------------------------------------------- corruptions

@dataclass(frozen=True)
class Payload:
    raw: bytes
    native: Any  # the JSON value of ``raw``, or NOT_JSON

    @classmethod
    def of(cls, value: Any) -> Payload:
        return cls(orjson.dumps(value), value)

    @classmethod
    def bytes_only(cls, raw: bytes) -> Payload:
        return cls(raw, NOT_JSON)


def _with(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**document, **changes}


def _invalid_utf8(document: dict[str, Any]) -> Payload:
    field = TEXT_FIELD[document["kind"]]
    marked = orjson.dumps(_with(document, **{field: "MARK"}))
    return Payload.bytes_only(marked.replace(b"MARK", b"ok \xff\xfe\xc3\x28 text"))


def _without(document: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != name}


@dataclass(frozen=True)
class Corruption:
    name: str
    build: Callable[[dict[str, Any], dict[str, Any]], Payload | None]  # (doc, other kind's doc)
    error: type[KVSessionsError] = ValidationError


CORRUPTIONS = [
    Corruption("invalid-utf8", lambda d, o: _invalid_utf8(d)),
    Corruption("array", lambda d, o: Payload.of([d])),
    Corruption("string", lambda d, o: Payload.of("session")),
    Corruption("number", lambda d, o: Payload.of(42)),
    Corruption("null", lambda d, o: Payload.of(None)),
    Corruption("truncated", lambda d, o: Payload.bytes_only(orjson.dumps(d)[:40])),
    Corruption("empty", lambda d, o: Payload.bytes_only(b"")),
    Corruption("two-documents", lambda d, o: Payload.bytes_only(orjson.dumps(d) * 2)),
    Corruption("nan", lambda d, o: Payload.bytes_only(
        orjson.dumps(_with(d, metadata={"x": 1})).replace(b'"x":1', b'"x":NaN'))),
    Corruption("lone-surrogate", lambda d, o: Payload.bytes_only(
        orjson.dumps(_with(d, metadata={"x": "MARK"})).replace(b"MARK", b"\\ud800"))),
    Corruption("unknown-enum", lambda d, o: Payload.of(_with(d, **{ENUM_FIELD[d["kind"]]: "root"}))
               if d["kind"] in ENUM_FIELD else None),
    Corruption("bad-timestamp", lambda d, o: Payload.of(
        _with(d, **{TIME_FIELD[d["kind"]]: "yesterday"}))),
    Corruption("impossible-timestamp", lambda d, o: Payload.of(
        _with(d, **{TIME_FIELD[d["kind"]]: "2026-02-31T10:00:00Z"}))),
    Corruption("timestamp-number", lambda d, o: Payload.of(
        _with(d, **{TIME_FIELD[d["kind"]]: 1_700_000_000}))),
    Corruption("missing-field", lambda d, o: Payload.of(_without(d, TEXT_FIELD[d["kind"]]))),
    Corruption("wrong-type", lambda d, o: Payload.of(_with(d, metadata=["not", "an object"]))),
    Corruption("extra-field", lambda d, o: Payload.of(_with(d, injected={"$where": "1"}))),
    Corruption("unknown-kind", lambda d, o: Payload.of(_with(d, kind="evil"))),
    Corruption("no-kind", lambda d, o: Payload.of(_without(d, "kind"))),
    Corruption("other-kind", lambda d, o: Payload.of(o)),
    Corruption("future-version", lambda d, o: Payload.of(_with(d, v=999)),
               UnsupportedVersionError),
    Corruption("version-zero", lambda d, o: Payload.of(_with(d, v=0))),
    Corruption("version-text", lambda d, o: Payload.of(_with(d, v="1"))),
    Corruption("version-float", lambda d, o: Payload.of(_with(d, v=1.5))),
]

# ---------------------------------------------------------------------- raw writers

Writer = Callable[[KVStore, str, Payload], Awaitable[str | None]]
#: A writer returns None when it wrote the payload, or why the backend cannot hold it.


async def write_sqlite(store: KVStore, key: str, payload: Payload) -> str | None:
    with sqlite3.connect(getattr(store, "path")) as db:  # noqa: B009 - an adapter attribute
        db.execute(f'INSERT OR REPLACE INTO "{store.namespace}" (key, value, expires_at) '
                   "VALUES (?, ?, NULL)", (key, payload.raw))
    db.close()
    return None


async def write_file(store: KVStore, key: str, payload: Payload) -> str | None:
    (await _file_path(store, key)).write_bytes(b"kvs1 -\n" + payload.raw)
    return None


async def _file_path(store: KVStore, key: str) -> Path:
    """Where the file store keeps ``key`` (its folders created)."""
    from kvsessions.kv.file_layout import key_to_parts

    folder: Path = getattr(store, "folder")  # noqa: B009
    dirs, name = key_to_parts(key)
    for part in dirs:
        folder = folder / part
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


async def write_postgresql(store: KVStore, key: str, payload: Payload) -> str | None:
    """JSONB holds parsed JSON only: anything else goes into ``raw`` (the exact bytes the
    adapter keeps for documents JSONB would change), which reads return instead."""
    import asyncpg

    from tests.backends.postgresql import POSTGRES_URL

    connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        table = f'"{store.namespace}"'
        if payload.native is NOT_JSON:
            await connection.execute(
                f"INSERT INTO {table} (key, value, raw) VALUES ($1, '{{}}'::jsonb, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, raw = EXCLUDED.raw",
                key, payload.raw)
        else:
            await connection.execute(
                f"INSERT INTO {table} (key, value, raw) VALUES ($1, $2::text::jsonb, NULL) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, raw = NULL",
                key, payload.raw.decode())
    finally:
        await connection.close()
    return None


async def write_mongodb(store: KVStore, key: str, payload: Payload) -> str | None:
    """A MongoDB document is a BSON object: only object payloads can be written (plus invalid
    UTF-8, as raw BSON, when the server takes it)."""
    from bson import BSON
    from bson.raw_bson import RawBSONDocument
    from pymongo import AsyncMongoClient

    from tests.mongo_server import DATABASE, mongodb_url

    if payload.native is NOT_JSON:
        if b"\xff\xfe" not in payload.raw:
            return "a MongoDB document is BSON, never unparsed bytes"
        value = orjson.loads(payload.raw.replace(b"\xff\xfe\xc3\x28", b"MARK"))
        encoded = BSON.encode({"_id": key, **value})
        document: Any = RawBSONDocument(encoded.replace(b"MARK", b"\xff\xfe\xc3\x28"))
    elif type(payload.native) is not dict:
        return "a MongoDB document is always an object"
    else:
        document = {"_id": key, **payload.native}
    client: Any = AsyncMongoClient(mongodb_url(), serverSelectionTimeoutMS=10_000)
    try:
        collection = client[DATABASE][store.namespace]
        await collection.delete_one({"_id": key})
        try:
            await collection.insert_one(document)
        except Exception as exc:  # the server refused it: it cannot be stored there
            return f"the server refuses it ({type(exc).__name__})"
    finally:
        await client.close()
    return None


async def write_redis(store: KVStore, key: str, payload: Payload) -> str | None:
    """The adapter's layout: the value string, and the key in the ordered index."""
    client: Any = getattr(store, "_client")  # noqa: B009 - the store's own redis-py client
    assert isinstance(store, RedisStore)
    await client.set(await index_raw_key(store, key), payload.raw)
    return None


WRITERS: dict[str, Writer] = {
    "sqlite": write_sqlite, "file": write_file, "postgresql": write_postgresql,
    "mongodb": write_mongodb, "redis": write_redis, "redis_cluster": write_redis,
}


@pytest.fixture(params=RAW_BACKENDS)
def raw_backend(request: Any, tmp_path: Path) -> tuple[str, StoreFactory]:
    name: str = request.param
    return name, ALL[name](request, tmp_path)


# ---------------------------------------------------------------------- checks

def _samples() -> tuple[ChatSession, ChatMessage, UploadedFileRecord]:
    session = ChatSession.create("gemini-2.5-flash", metadata={"team": "a"})
    message = session.add_message("user", "hello")
    record = UploadedFileRecord.create("files/x", "https://files.example.invalid/x", "x.pdf",
                                       10, "application/pdf", lifetime=timedelta(hours=1))
    return session, message, record


async def outcome(what: str, key: str, call: Callable[[], Awaitable[Any]],
                  expected: type[KVSessionsError] | tuple[type[KVSessionsError], ...],
                  ) -> str | None:
    """None when ``call`` raises ``expected`` naming ``key``; otherwise what went wrong."""
    try:
        result = await call()
    except KVSessionsError as exc:
        if not isinstance(exc, expected):
            return f"{what}: {type(exc).__name__} instead of {expected}: {exc}"
        if key not in str(exc):
            return f"{what}: the error does not name {key!r}: {exc}"
        return None
    except Exception as exc:
        return f"{what}: a raw {type(exc).__name__} escaped: {str(exc)[:300]}"
    return f"{what}: returned {result!r:.200} instead of raising"


async def _scan_all(store: KVStore, prefix: str) -> list[tuple[str, bytes]]:
    return [item async for item in store.scan(prefix)]


async def _iter_all(storage: SessionStorage) -> list[ChatSession]:
    return [session async for session in storage.iter_sessions()]


async def readers_fail(storage: SessionStorage, validating: ValidatingStore, kind: str,
                       key: str, session_id: str, file_id: str,
                       expected: type[KVSessionsError] | tuple[type[KVSessionsError], ...],
                       skip: frozenset[str] = frozenset()) -> list[str]:
    """Every reader of the corrupt document at ``key`` (of ``kind``) must raise."""
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "ValidatingStore.get": lambda: validating.get(key),
        "ValidatingStore.get_many": lambda: validating.get_many([key]),
        "ValidatingStore.scan": lambda: _scan_all(validating, key.split(":")[0] + ":"),
    }
    if kind == "session":
        calls |= {
            "load_session": lambda: storage.load_session(session_id),
            "load_session(last_messages)": lambda: storage.load_session(session_id,
                                                                         last_messages=5),
            "count_sessions": lambda: storage.count_sessions(),
            "iter_sessions": lambda: _iter_all(storage),
            "statistics": storage.statistics,
        }
    elif kind == "message":
        calls |= {
            "load_session": lambda: storage.load_session(session_id),
            "load_session(last_messages)": lambda: storage.load_session(session_id,
                                                                         last_messages=5),
            "load_messages": lambda: storage.load_messages(session_id),
        }
    else:
        calls |= {
            "load_file_record": lambda: storage.load_file_record(file_id),
            "list_file_records": lambda: storage.list_file_records(),
            "statistics": storage.statistics,
        }
    failures = []
    for what, call in calls.items():
        if what in skip:
            continue
        failure = await outcome(what, key, call, expected)
        if failure is not None:
            failures.append(failure)
    return failures


# ---------------------------------------------------------------------- the tests

@pytest.mark.parametrize("corruptions", [CORRUPTIONS], ids=["corruptions"])
async def test_corrupt_documents_raise_typed_errors_naming_the_key(
        raw_backend: tuple[str, StoreFactory], corruptions: list[Corruption]) -> None:
    """Each corruption on each kind of document, written with the raw driver, read every way:
    a typed error naming the key, every time."""
    backend, factory = raw_backend
    writer = WRITERS[backend]
    store = factory.new()
    await store.open()
    storage = SessionStorage(store)
    validating = ValidatingStore(store)
    failures: list[str] = []
    try:
        for kind in ("session", "message", "file"):
            for corruption in corruptions:
                session, message, record = _samples()
                await storage.save_session(session)
                await storage.save_file_record(record)
                documents = {
                    "session": (session_key(session.session_id), session_to_document(session)),
                    "message": (message_key(session.session_id, message.message_id),
                                message_to_document(message)),
                    "file": (file_key(record.file_id), file_to_document(record)),
                }
                key, document = documents[kind]
                other = documents["file" if kind != "file" else "session"][1]
                payload = corruption.build(document, other)
                case = f"{kind}/{corruption.name}"
                if payload is None:
                    continue  # the kind has no such field
                refused = await writer(store, key, payload)
                if refused is not None:
                    report(backend, case, f"cannot be stored: {refused}")
                    continue
                found = await readers_fail(storage, validating, kind, key, session.session_id,
                                           record.file_id, corruption.error)
                report(backend, case, "typed error naming the key" if not found
                       else f"FAILED: {found}")
                failures += [f"{case}: {failure}" for failure in found]
                await store.delete_many([key, session_key(session.session_id),
                                         message_key(session.session_id, message.message_id),
                                         file_key(record.file_id)])
    finally:
        await store.close()
    assert not failures, f"{backend}: {len(failures)} reads did not fail cleanly:\n" + \
        "\n".join(failures)


# ---------------------------------------------------------------------- store-specific shapes

SpecialWriter = Callable[[KVStore, str, dict[str, Any]], Awaitable[None]]


async def _sqlite_value(store: KVStore, key: str, value: Any) -> None:
    with sqlite3.connect(getattr(store, "path")) as db:  # noqa: B009
        db.execute(f'INSERT OR REPLACE INTO "{store.namespace}" (key, value, expires_at) '
                   "VALUES (?, ?, NULL)", (key, value))
    db.close()


async def _file_bytes(store: KVStore, key: str, data: bytes) -> None:
    (await _file_path(store, key)).write_bytes(data)


async def _mongo_document(store: KVStore, key: str, document: dict[str, Any]) -> None:
    from pymongo import AsyncMongoClient

    from tests.mongo_server import DATABASE, mongodb_url

    client: Any = AsyncMongoClient(mongodb_url(), serverSelectionTimeoutMS=10_000)
    try:
        collection = client[DATABASE][store.namespace]
        await collection.replace_one({"_id": key}, {"_id": key, **document}, upsert=True)
    finally:
        await client.close()


def _bson_values() -> dict[str, Any]:
    from bson import Binary, Decimal128, ObjectId, Regex

    return {"object-id": ObjectId(), "binary": Binary(b"\x00\xff"),
            "decimal128": Decimal128("1.5"), "regex": Regex("^a"),
            "nan": float("nan"), "infinity": float("inf")}


def _special_writers() -> dict[str, list[tuple[str, SpecialWriter]]]:
    def mongo_value(name: str) -> SpecialWriter:
        async def write(store: KVStore, key: str, document: dict[str, Any]) -> None:
            value = _bson_values()[name]
            await _mongo_document(store, key, _with(document, metadata={"x": value}))
        return write

    async def mongo_expiry_text(store: KVStore, key: str, document: dict[str, Any]) -> None:
        await _mongo_document(store, key, _with(document, _expires_at="tomorrow"))

    async def redis_hash(store: KVStore, key: str, document: dict[str, Any]) -> None:
        client: Any = getattr(store, "_client")  # noqa: B009
        assert isinstance(store, RedisStore)
        value_key = await index_raw_key(store, key)
        await client.delete(value_key)
        await client.hset(value_key, "kind", "session")

    sqlite: list[tuple[str, SpecialWriter]] = [
        ("text-value", lambda s, k, d: _sqlite_value(s, k, orjson.dumps(d).decode())),
        ("integer-value", lambda s, k, d: _sqlite_value(s, k, 42)),
    ]
    file: list[tuple[str, SpecialWriter]] = [
        ("no-header", lambda s, k, d: _file_bytes(s, k, orjson.dumps(d))),
        ("bad-expiry", lambda s, k, d: _file_bytes(s, k, b"kvs1 soon\n" + orjson.dumps(d))),
    ]
    mongodb = [(f"bson-{name}", mongo_value(name)) for name in _bson_values()]
    mongodb.append(("expiry-not-a-date", mongo_expiry_text))
    return {"sqlite": sqlite, "file": file, "mongodb": mongodb,
            "redis": [("wrong-redis-type", redis_hash)],
            "redis_cluster": [("wrong-redis-type", redis_hash)], "postgresql": []}


async def test_store_specific_shapes_raise_typed_errors_naming_the_key(
        raw_backend: tuple[str, StoreFactory]) -> None:
    """What only one store can hold (an SQLite TEXT value, a file without its header, BSON
    values JSON has no form for, a Redis hash where a string belongs) is a typed error naming
    the key (``StoreError`` or ``ValidationError``), never a raw driver error or a silent
    change (BSON NaN would otherwise read back as ``null``)."""
    backend, factory = raw_backend
    store = factory.new()
    await store.open()
    storage = SessionStorage(store)
    validating = ValidatingStore(store)
    failures: list[str] = []
    try:
        for name, write in _special_writers()[backend]:
            session, _, record = _samples()
            await storage.save_session(session)
            key = session_key(session.session_id)
            await write(store, key, session_to_document(session))
            # Known limit: Redis MGET reads a value of another Redis type as nil, so get_many
            # reports it missing (telling it apart would cost a round trip per missing key).
            skip = frozenset({"ValidatingStore.get_many"} if name == "wrong-redis-type" else ())
            found = await readers_fail(storage, validating, "session", key, session.session_id,
                                       record.file_id, (StoreError, ValidationError), skip)
            raw = await outcome("get (no validation)", key, functools.partial(store.get, key),
                                (StoreError, ValidationError))
            if raw is not None and "returned" not in raw:
                found.append(raw)  # a raw store may hand back bytes; never a raw exception
            report(backend, f"session/{name}", "typed error naming the key" if not found
                   else f"FAILED: {found}")
            failures += [f"{name}: {failure}" for failure in found]
            await store.delete_many([key, message_key(session.session_id,
                                                      session.messages[0].message_id)])
    finally:
        await store.close()
    assert not failures, f"{backend}: {len(failures)} reads did not fail cleanly:\n" + \
        "\n".join(failures)


# ---------------------------------------------------------------------- one bad head among many

HEAD_CORRUPTIONS: dict[str, Callable[[dict[str, Any]], Payload]] = {
    "invalid-utf8": _invalid_utf8,
    "future-version": lambda d: Payload.of(_with(d, v=999)),
    "unknown-status": lambda d: Payload.of(_with(d, status="root")),
    "missing-field": lambda d: Payload.of(_without(d, "model")),
    "wrong-type": lambda d: Payload.of(_with(d, metadata=["not", "an object"])),
    "extra-field": lambda d: Payload.of(_with(d, injected=True)),
}


@pytest.mark.parametrize("call", [
    pytest.param({}, id="all"),
    pytest.param({"limit": 2}, id="limit-excludes-it"),
    pytest.param({"status": "archived"}, id="status-excludes-it"),
])
async def test_one_corrupt_head_among_many_makes_list_sessions_raise(
        tmp_path: Path, call: dict[str, Any]) -> None:
    """The decision (docs/security.md, "Data written around kvsessions"): a listing raises on
    the first corrupt head of its page, naming it; one outside the page (older than
    ``limit``, or another status) is not read (listings cost O(page), issue 12), and
    ``count_sessions`` raises on it instead, so the damage is never counted away. The operator
    finds every bad document with ``kvsessions validate URL`` and repairs or deletes it."""
    factory = ALL["sqlite"](None, tmp_path)
    store = factory.new()
    await store.open()
    storage = SessionStorage(store)
    failures = []
    try:
        for name, corrupt in HEAD_CORRUPTIONS.items():
            good = [ChatSession.create("gemini-2.5-flash") for _ in range(5)]
            for session in good:
                await storage.save_session(session)
            bad = ChatSession.create("old-model")
            document = _with(session_to_document(bad), updated_at="2020-01-01T00:00:00Z",
                             created_at="2020-01-01T00:00:00Z")
            key = session_key(bad.session_id)
            await storage.save_session(bad)  # its index entry, then the damage in place
            entries = await store.keys("index:")
            await write_sqlite(store, key, corrupt(document))
            reader = (lambda: storage.list_sessions(**call)) if not call else (
                lambda: storage.count_sessions(call.get("status")))
            failure = await outcome(f"{name}: {'list' if not call else 'count'}_sessions"
                                    f"(**{call})", key, reader, ValidationError)
            if failure is not None:
                failures.append(failure)
            await store.delete_many([key, *entries,
                                     *(session_key(s.session_id) for s in good)])
    finally:
        await store.close()
    assert not failures, "\n".join(failures)
