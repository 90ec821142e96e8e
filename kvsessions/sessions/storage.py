"""``SessionStorage``: chat sessions, their messages and file records on any key-value store.

Layout (see ``kvsessions.documents.codec``): ``session:{sid}`` holds the session head, each
message is its own document under ``message:{sid}:{mid}`` (message ids are time-ordered, so key
order is conversation order), and ``file:{fid}`` holds an uploaded-file record. So:

* appending a message writes one new message document plus the head, whatever the history's
  length; ``save_session`` writes the head and only the messages this storage has not stored
  from that session object yet, and never deletes anything another writer stored;
* loading a session is one get (the head) and one prefix scan (its messages); the latest N
  messages are one short reverse scan;
* listing sessions reads heads only.

``message_count`` under concurrent writers: two processes appending at once each write the head
they computed, so the head's count is *advisory* (it may lag). A full ``load_session`` counts the
messages actually stored and reports that; ``list_sessions`` and ``load_session(id,
last_messages=N)`` report the head's count (at least the number of messages loaded).

Every document is validated (``ValidatingStore``) before anything of a save is written, so an
invalid session or message raises ``ValidationError`` naming the field and stores nothing.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from kvsessions.documents.codec import (
    CURRENT_VERSIONS,
    FILE_PREFIX,
    SESSION_PREFIX,
    decode_document,
    document_to_file,
    document_to_message,
    document_to_session,
    file_key,
    file_to_document,
    format_timestamp,
    message_key,
    message_prefix,
    message_to_document,
    parse_timestamp,
    session_key,
    session_to_document,
)
from kvsessions.documents.models import (
    MESSAGE_ROLES,
    SESSION_STATUSES,
    ChatMessage,
    ChatSession,
    UploadedFileRecord,
    utc_now,
)
from kvsessions.documents.validation import validate_document
from kvsessions.errors import (
    InvalidValueError,
    SessionNotFoundError,
    ValidationError,
)
from kvsessions.kv.base import KVStore
from kvsessions.kv.registry import open_store
from kvsessions.wrappers.validating import ValidatingStore

__all__ = [
    "FileSessionStorage",
    "MemorySessionStorage",
    "MongoDBSessionStorage",
    "PostgreSQLSessionStorage",
    "RedisSessionStorage",
    "SQLiteSessionStorage",
    "SessionNotFoundError",
    "SessionStorage",
]

#: How many keys one ``delete_many`` call removes while deleting a session's messages.
_DELETE_BATCH = 500
#: Attribute on a ChatSession object that remembers which of its messages are stored, per storage.
_SAVED_ATTRIBUTE = "_kvsessions_saved"


@dataclass
class _SavedMessages:
    """Which messages of one session object one storage has stored: the ids, plus how many
    leading messages of ``session.messages`` were all stored (so a save looks only at the
    messages after them: O(new messages), not O(history))."""

    ids: set[str] = field(default_factory=set)
    prefix: int = 0
    last_id: str | None = None


class SessionStorage:
    """The seed's storage API over any ``KVStore`` (see the module docstring for the layout).

    ``store`` is the key-value store given; everything goes through a ``ValidatingStore``
    around it (or the store itself when it already is one). ``close()`` closes the store.
    """

    def __init__(self, store: KVStore) -> None:
        if not isinstance(store, KVStore):
            raise TypeError(f"SessionStorage needs a KVStore, not {type(store).__name__}; "
                            "use SessionStorage.from_url(url) for a URL")
        self.store = store
        self._documents = store if isinstance(store, ValidatingStore) else ValidatingStore(store)
        #: The store below validation: raw bytes for scans whose documents are checked here.
        self._raw = self._documents.inner
        self._token = object()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SessionStorage:
        """A storage on the store ``url`` names (``open_store`` options pass through)."""
        return cls(open_store(url, **options))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    # ------------------------------------------------------------------ lifecycle

    async def initialize(self) -> None:
        """Connect and create what the store needs. Idempotent; other calls open lazily too."""
        await self._documents.open()

    async def close(self) -> None:
        await self._documents.close()

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ sessions

    async def save_session(self, session: ChatSession) -> bool:
        """Store the head and the messages not stored yet. Nothing is written when any of them
        is invalid; messages already stored (by anyone) are kept."""
        saved = self._saved(session)
        unsaved = self._unsaved(session, saved)
        documents = [
            (message_key(session.session_id, message.message_id),
             self._message_document(session.session_id, message))
            for message in unsaved
        ]
        documents.append((session_key(session.session_id), session_to_document(session)))
        await self._documents.put_documents(documents)
        saved.ids.update(message.message_id for message in unsaved)
        self._mark_prefix(session, saved)
        return True

    async def append_message(self, session_id: str, message: ChatMessage) -> None:
        """Store one message of an existing session and update its head: one get and one batch
        write, whatever the length of the history. Raises ``SessionNotFoundError``."""
        document = self._message_document(session_id, message)
        head_key = session_key(session_id)
        head = await self._documents.get_document(head_key)
        if head is None:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store!r}")
        head = dict(head)
        head["message_count"] = head["message_count"] + 1
        updated = parse_timestamp(head["updated_at"], key=head_key, path="updated_at")
        head["updated_at"] = format_timestamp(max(updated, message.created_at))
        await self._documents.put_documents(
            [(message_key(session_id, message.message_id), document), (head_key, head)])

    async def load_session(
        self, session_id: str, *, last_messages: int | None = None
    ) -> ChatSession | None:
        """The session with all its messages (or only the latest ``last_messages``), or None.

        A full load reports ``message_count`` as the number of messages stored; a partial load
        reports the head's count (see the module docstring)."""
        if last_messages is not None:
            _check_limit(last_messages, "last_messages")
        key = session_key(session_id)
        head = await self._documents.get_document(key)
        if head is None:
            return None
        session = document_to_session(head, key=key)
        if last_messages is None:
            session.messages = await self._scan_messages(message_prefix(session_id))
            session.message_count = len(session.messages)
        else:
            session.messages = await self.load_messages(session_id, limit=last_messages)
            session.message_count = max(session.message_count, len(session.messages))
        saved = self._saved(session)
        saved.ids.update(message.message_id for message in session.messages)
        self._mark_prefix(session, saved)
        return session

    async def load_messages(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        before: str | None = None,
        after: str | None = None,
    ) -> list[ChatMessage]:
        """A page of a session's messages, in conversation order, by message id (exclusive).

        With only ``after``: the first ``limit`` messages after it (paging forwards). Otherwise
        the latest ``limit`` messages (before ``before``, after ``after``, when given): the chat
        window, and paging backwards with ``before=<oldest message loaded>.message_id``. Only the
        page is read, never the rest of the history."""
        if limit is not None:
            _check_limit(limit, "limit")
        prefix = message_prefix(session_id)
        after_key = None if after is None else prefix + after
        before_key = None if before is None else prefix + before
        if after_key is not None and before_key is None:
            return await self._scan_messages(prefix, start_after=after_key, limit=limit)
        messages = await self._scan_messages(prefix, start_after=before_key, limit=limit,
                                             reverse=True, stop_at=after_key)
        messages.reverse()
        return messages

    async def list_sessions(
        self, status: str | None = None, limit: int = 100
    ) -> list[ChatSession]:
        """Session heads (``messages`` empty, ``message_count`` from the head), most recently
        updated first. Reads and checks every head once (there is no index), keeping only the
        ``limit`` newest in memory; a damaged head raises ``ValidationError`` naming it."""
        if status is not None and status not in SESSION_STATUSES:
            raise ValidationError(f"unknown status {status!r}; one of "
                                  f"{', '.join(SESSION_STATUSES)}", path="status")
        _check_limit(limit, "limit")
        if limit == 0:
            return []
        heap: list[tuple[datetime, str, dict[str, Any]]] = []
        async for item in self._head_candidates(status):
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
        return [document_to_session(document, key=key)
                for _, key, document in sorted(heap, key=lambda item: item[:2], reverse=True)]

    async def _head_candidates(
        self, status: str | None
    ) -> AsyncIterator[tuple[datetime, str, dict[str, Any]]]:
        """(updated_at, key, document) of every head with ``status``, each parsed and checked
        once. Every head read is checked, also those not returned: a listing that silently
        leaves out a damaged session would hide the damage."""
        validate = self._documents.validate_reads
        async for key, value in self._raw.scan(SESSION_PREFIX):
            document = decode_document(value, key=key)
            if validate:
                validate_document(document, key=key)
            try:
                if status is not None and document["status"] != status:
                    continue
                updated = parse_timestamp(document["updated_at"], key=key, path="updated_at")
            except (KeyError, TypeError):
                validate_document(document, key=key)  # raises, naming the field
                raise
            yield updated, key, document

    async def iter_sessions(self, status: str | None = None) -> AsyncIterator[ChatSession]:
        """Every session head (no messages), in key order, streamed: for maintenance jobs."""
        async for key, document in self._documents.scan_documents(SESSION_PREFIX):
            if status is None or document["status"] == status:
                yield document_to_session(document, key=key)

    async def delete_session(self, session_id: str) -> bool:
        """Remove the session and all its messages; True if anything was there. The messages
        go first, the head last, so an interrupted delete can simply be run again."""
        deleted = 0
        batch: list[str] = []
        async for key, _ in self._raw.scan(message_prefix(session_id)):
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                deleted += await self._raw.delete_many(batch)
                batch = []
        if batch:
            deleted += await self._raw.delete_many(batch)
        head_deleted = await self._raw.delete(session_key(session_id))
        return head_deleted or deleted > 0

    # ------------------------------------------------------------------ files

    async def save_file_record(self, file_record: UploadedFileRecord) -> bool:
        key = file_key(file_record.file_id)
        await self._documents.put_document(key, file_to_document(file_record))
        return True

    async def load_file_record(self, file_id: str) -> UploadedFileRecord | None:
        key = file_key(file_id)
        document = await self._documents.get_document(key)
        return None if document is None else document_to_file(document, key=key)

    async def list_file_records(self, limit: int = 100) -> list[UploadedFileRecord]:
        """Up to ``limit`` records, newest id first (ids from ``UploadedFileRecord.create`` are
        time-ordered): one short reverse scan."""
        _check_limit(limit, "limit")
        return [document_to_file(document, key=key) async for key, document in
                self._documents.scan_documents(FILE_PREFIX, limit=limit, reverse=True)]

    async def delete_expired_files(self) -> int:
        """Delete the file records whose ``expires_at`` has passed; how many were deleted."""
        now = utc_now()
        expired: list[str] = []
        async for key, document in self._documents.scan_documents(FILE_PREFIX):
            if parse_timestamp(document["expires_at"], key=key, path="expires_at") <= now:
                expired.append(key)
        deleted = 0
        for start in range(0, len(expired), _DELETE_BATCH):
            deleted += await self._raw.delete_many(expired[start:start + _DELETE_BATCH])
        return deleted

    # ------------------------------------------------------------------ statistics

    async def statistics(self) -> dict[str, Any]:
        """Counts from the heads and file records (message counts are the heads' counts)."""
        by_status = dict.fromkeys(SESSION_STATUSES, 0)
        messages = 0
        async for _key, document in self._documents.scan_documents(SESSION_PREFIX):
            by_status[document["status"]] = by_status.get(document["status"], 0) + 1
            messages += document["message_count"]
        files = expired_files = 0
        now = utc_now()
        async for key, document in self._documents.scan_documents(FILE_PREFIX):
            files += 1
            if parse_timestamp(document["expires_at"], key=key, path="expires_at") <= now:
                expired_files += 1
        return {
            "total_sessions": sum(by_status.values()),
            "sessions_by_status": by_status,
            "active_sessions": by_status["active"],
            "archived_sessions": by_status["archived"],
            "expired_sessions": by_status["expired"],
            "total_messages": messages,
            "total_files": files,
            "expired_files": expired_files,
        }

    # ------------------------------------------------------------------ internals

    def _message_document(self, session_id: str, message: ChatMessage) -> dict[str, Any]:
        if message.session_id != session_id:
            raise ValidationError(
                f"message {message.message_id!r} belongs to session {message.session_id!r}, "
                f"not {session_id!r}", key=message_key(session_id, str(message.message_id)),
                path="session_id", kind="message")
        return message_to_document(message)

    async def _scan_messages(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
        stop_at: str | None = None,
    ) -> list[ChatMessage]:
        """Messages of one scan, each parsed once. A document in the form this release writes
        is checked field by field on the spot (``_message_from_document``); anything else
        takes the full path (upcast, JSON Schema), which names what is wrong."""
        messages: list[ChatMessage] = []
        append, loads, fast = messages.append, orjson.loads, _message_from_document
        async for page in self._raw.scan_pages(prefix, start_after=start_after, limit=limit,
                                               reverse=reverse):
            for key, value in page:
                if stop_at is not None and key <= stop_at:
                    return messages
                try:
                    document = loads(value)
                except orjson.JSONDecodeError:
                    document = None
                message = fast(document)
                if message is None:
                    document = decode_document(value, key=key)
                    if self._documents.validate_reads:
                        validate_document(document, key=key)
                    message = document_to_message(document, key=key)
                append(message)
        return messages

    def _saved(self, session: ChatSession) -> _SavedMessages:
        registry: dict[object, _SavedMessages] | None = getattr(session, _SAVED_ATTRIBUTE, None)
        if registry is None:
            registry = {}
            setattr(session, _SAVED_ATTRIBUTE, registry)
        saved = registry.get(self._token)
        if saved is None:
            saved = registry[self._token] = _SavedMessages()
        return saved

    @staticmethod
    def _unsaved(session: ChatSession, saved: _SavedMessages) -> list[ChatMessage]:
        messages = session.messages
        start = saved.prefix
        if start and (start > len(messages) or messages[start - 1].message_id != saved.last_id):
            start = 0  # the list was changed other than by appending: look at all of it
        return [m for m in messages[start:] if m.message_id not in saved.ids]

    @staticmethod
    def _mark_prefix(session: ChatSession, saved: _SavedMessages) -> None:
        saved.prefix = len(session.messages)
        saved.last_id = session.messages[-1].message_id if session.messages else None


_MESSAGE_FIELD_COUNT = 8  # kind, v, message_id, session_id, role, content, created_at, metadata
_ROLES = frozenset(MESSAGE_ROLES)
#: The fast path knows message version 1 only; once a newer one exists, every read of a v1
#: document must be upcast, so the fast path switches itself off (-1 matches no version).
_FAST_MESSAGE_VERSION = 1 if CURRENT_VERSIONS["message"] == 1 else -1
_from_iso = datetime.fromisoformat


def _message_from_document(document: Any) -> ChatMessage | None:
    """The message of a ``message`` v1 document that meets ``message.v1.json``, checked here
    field by field at a fraction of the schema check's cost; None for anything this fast path
    is not sure of (which then takes the full path and gets a precise error). That this accepts
    only what the schema accepts is pinned down by tests/test_storage.py."""
    if type(document) is not dict or len(document) != _MESSAGE_FIELD_COUNT:
        return None
    try:  # eight fields, all of these present: exactly the schema's fields
        kind, version = document["kind"], document["v"]
        message_id, session_id = document["message_id"], document["session_id"]
        role, content = document["role"], document["content"]
        created, metadata = document["created_at"], document["metadata"]
    except KeyError:
        return None
    if (kind != "message" or type(version) is not int or version != _FAST_MESSAGE_VERSION
            or type(message_id) is not str or not 0 < len(message_id) <= 200
            or type(session_id) is not str or not 0 < len(session_id) <= 200
            or type(role) is not str or role not in _ROLES or type(content) is not str
            or type(metadata) is not dict or type(created) is not str):
        return None
    # The timestamp in the shape this release writes, YYYY-MM-DDTHH:MM:SS[.ffffff]Z in ASCII;
    # fromisoformat then checks the digits and ranges (which the schema's pattern bounds too).
    size = len(created)
    if not ((size == 20 or (size == 27 and created[19] == ".")) and created[-1] == "Z"
            and created[4] == "-" and created[7] == "-" and created[10] == "T"
            and created[13] == ":" and created[16] == ":" and created.isascii()):
        return None
    try:
        moment = _from_iso(created)
    except ValueError:
        return None
    return ChatMessage(message_id, session_id, role, content, moment, metadata)


def _check_limit(limit: object, name: str) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidValueError(f"{name} must be a whole number >= 0, not {limit!r}")


# ---------------------------------------------------------------------- conveniences

def _with_query(url: str, **params: str | int | None) -> str:
    """``url`` with the given query parameters set (None leaves a parameter alone)."""
    base, _, query = url.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
             if k not in params or params[k] is None]
    pairs += [(k, str(v)) for k, v in params.items() if v is not None]
    return f"{base}?{urlencode(pairs)}" if pairs else base


def _path_url(scheme: str, path: str | os.PathLike[str]) -> str:
    """The URL of a file or folder, absolute: ``sqlite:////abs/x.db`` (after ``sqlite:///``
    comes the path, as SQLAlchemy reads it) and ``file:///abs/folder``."""
    absolute = str(Path(path).expanduser().absolute())
    return f"{scheme}://{'/' if scheme == 'sqlite' else ''}{quote(absolute)}"


class SQLiteSessionStorage(SessionStorage):
    """Sessions in one SQLite file (created when missing); ``":memory:"`` for a private one."""

    def __init__(self, path: str | os.PathLike[str] = "sessions.db", *,
                 namespace: str | None = None) -> None:
        url = "sqlite:///:memory:" if str(path) == ":memory:" else _path_url("sqlite", path)
        super().__init__(open_store(_with_query(url, namespace=namespace)))


class FileSessionStorage(SessionStorage):
    """Sessions as files in a folder (one file per document), no database needed."""

    def __init__(self, directory: str | os.PathLike[str], *,
                 namespace: str | None = None) -> None:
        url = _path_url("file", directory)
        super().__init__(open_store(_with_query(url, namespace=namespace)))


class MemorySessionStorage(SessionStorage):
    """Sessions in this process only (tests, demos): nothing survives ``close()``."""

    def __init__(self, *, namespace: str | None = None) -> None:
        super().__init__(open_store(_with_query("memory://", namespace=namespace)))


class PostgreSQLSessionStorage(SessionStorage):
    """Sessions in a PostgreSQL table, through an asyncpg pool of the given sizes."""

    def __init__(self, dsn: str, min_pool_size: int = 5, max_pool_size: int = 20, *,
                 namespace: str | None = None) -> None:
        url = _with_query(dsn, min_pool_size=min_pool_size, max_pool_size=max_pool_size,
                          namespace=namespace)
        super().__init__(open_store(url))


class MongoDBSessionStorage(SessionStorage):
    """Sessions in a MongoDB collection of ``database_name`` (or the URI's database)."""

    def __init__(self, uri: str, database_name: str | None = None, *,
                 namespace: str | None = None) -> None:
        super().__init__(open_store(_with_query(uri, database=database_name,
                                                namespace=namespace)))


class RedisSessionStorage(SessionStorage):
    """Sessions in Redis (or Redis Cluster with ``redis+cluster://``)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 namespace: str | None = None) -> None:
        super().__init__(open_store(_with_query(url, namespace=namespace)))
