"""``SessionStorage``: chat sessions, their messages and file records on any key-value store.

Layout (see ``kvsessions.documents.keys``): ``session:{sid}`` holds the session head, each
message is its own document under ``message:{sid}:{mid}`` (message ids are time-ordered, so key
order is conversation order), and ``file:{fid}`` holds an uploaded-file record. So:

* appending a message costs one get of the head, one new message document and one
  compare-and-set of the head, whatever the history's length; ``save_session`` writes only
  what changed: the messages this storage has not stored from that session object yet, the
  edits of those it loaded or saved, the deletion of those removed from the list, and the
  head when something in it changed; it never deletes a message the object never held;
* single messages are appended, read, updated, deleted and popped, or all cleared, by the
  methods of ``kvsessions.sessions.message_edits``, each at the cost of the messages it
  touches;
* loading a session is one get (the head) and one prefix scan (its messages); the latest N
  messages are one short reverse scan;
* listing sessions reads about ``limit`` index entries and the heads they name, whatever the
  store's size (``kvsessions.sessions.listing``; the rules that keep the entries right under
  concurrent writers are in ``kvsessions.sessions.index``): an append or a save that moves
  ``updated_at`` also writes the new entries before the head and removes the old after it.

``update_session`` changes a head alone (``kvsessions.sessions.head_updates``); state
documents live beside sessions (``kvsessions.sessions.state``); sessions may have an owner,
listed through owner index entries (``kvsessions.sessions.owners``). Every head write adds one
to the head's ``revision``.

Concurrent writers, in any number of processes, need no lock: every change of a head is a
``compare_and_set`` from the head just read (see ``kvsessions.sessions.heads``), so
``message_count`` is exact once the writers are done, saves merge with what others wrote, and a
deleted session never comes back.

Every document is validated (``ValidatingStore``) before anything of a save is written, so an
invalid session or message raises ``ValidationError`` naming the field and stores nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from kvsessions.documents.codec import (
    decode_document,
    document_to_session,
    format_timestamp,
    message_to_document,
    session_to_document,
)
from kvsessions.documents.keys import (
    SESSION_PREFIX,
    encode_id,
    legacy_key_error,
    message_key,
    message_prefix,
    session_key,
    session_state_key,
)
from kvsessions.documents.models import (
    ChatMessage,
    ChatSession,
    utc_now,
)
from kvsessions.documents.validation import validate_document
from kvsessions.errors import SessionNotFoundError, ValidationError
from kvsessions.kv.base import KVStore, outlive_cancellation
from kvsessions.kv.registry import open_store
from kvsessions.kv.values import check_key
from kvsessions.sessions.arguments import check_limit
from kvsessions.sessions.conditional_append import ConditionalAppend
from kvsessions.sessions.damaged import (
    DamagedHandling,
    DamagedPolicy,
    DamagedReport,
    check_damaged_policy,
)
from kvsessions.sessions.files import FileRecords
from kvsessions.sessions.head_updates import HeadChange, update_head
from kvsessions.sessions.heads import (
    DELETING,
    Head,
    SavedState,
    check_expected_revision,
    check_revision,
    head_fields,
    is_stale,
    merged_head,
    next_revision,
)
from kvsessions.sessions.index import IndexState, SessionIndex, every_entry
from kvsessions.sessions.insertion import SessionInsertion
from kvsessions.sessions.listing import SessionListing
from kvsessions.sessions.message_changes import SavePlan, plan_save, remember
from kvsessions.sessions.message_edits import CREATE_TOGETHER, MessageEdits
from kvsessions.sessions.message_scan import scan_messages
from kvsessions.sessions.message_times import TimeWindow
from kvsessions.sessions.search import MessageHit, search_messages
from kvsessions.sessions.state import State, StateDocuments, StateScope
from kvsessions.wrappers.validating import ValidatingStore

if TYPE_CHECKING:
    from kvsessions.sessions.conveniences import (
        FileSessionStorage,
        MemorySessionStorage,
        MongoDBSessionStorage,
        PostgreSQLSessionStorage,
        RedisSessionStorage,
        SQLiteSessionStorage,
    )
    from kvsessions.sessions.conveniences import (
        _path_url as _path_url,
    )
    from kvsessions.sessions.conveniences import (
        _with_query as _with_query,
    )

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

#: Names this module has always offered that live in ``conveniences`` (which subclasses
#: ``SessionStorage``, so it is imported on first use, not here: no import cycle).
_CONVENIENCES = frozenset({
    "FileSessionStorage", "MemorySessionStorage", "MongoDBSessionStorage",
    "PostgreSQLSessionStorage", "RedisSessionStorage", "SQLiteSessionStorage",
    "_path_url", "_with_query",
})


def __getattr__(name: str) -> Any:
    if name in _CONVENIENCES:
        from kvsessions.sessions import conveniences

        return getattr(conveniences, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: How many keys one ``delete_many`` call removes while deleting a session's messages.
_DELETE_BATCH = 500
#: Message documents one save writes at once (each with its own ``put_if_absent``).
_WRITE_CONCURRENCY = 32
#: Attribute on a ChatSession object that remembers what one storage stored of it.
_SAVED_ATTRIBUTE = "_kvsessions_saved"




class SessionStorage(SessionListing, FileRecords, MessageEdits, SessionInsertion,
                     ConditionalAppend):
    """The seed's storage API over any ``KVStore`` (see the module docstring for the layout).

    ``store`` is the key-value store given; everything goes through a ``ValidatingStore``
    around it (or the store itself when it already is one). ``close()`` closes the store.
    ``on_damaged`` is what reads do with a damaged message document: ``"raise"`` its
    ``ValidationError`` or ``"skip"`` it, logging a warning and calling
    ``on_damaged_report(key)`` (``kvsessions.sessions.damaged``); reads may override it.
    """

    def __init__(self, store: KVStore, *, on_damaged: DamagedPolicy = "raise",
                 on_damaged_report: DamagedReport | None = None) -> None:
        if not isinstance(store, KVStore):
            raise TypeError(f"SessionStorage needs a KVStore, not {type(store).__name__}; "
                            "use SessionStorage.from_url(url) for a URL")
        self.store = store
        self._documents = store if isinstance(store, ValidatingStore) else ValidatingStore(store)
        #: The store below validation: raw bytes for scans whose documents are checked here.
        self._raw = self._documents.inner
        self._token = object()
        self._index = SessionIndex(self._raw, self._read_head_document)
        self._index_state = IndexState(self._raw)
        if on_damaged_report is not None and not callable(on_damaged_report):
            raise TypeError("on_damaged_report must be a callable taking a key, or None")
        self._damaged = DamagedHandling(check_damaged_policy(on_damaged), on_damaged_report)
        self._states = StateDocuments(self._documents, self._read_head)

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

    async def save_session(self, session: ChatSession, *,
                           expected_revision: int | None = None) -> bool:
        """Store what changed and merge the head (see the module docstring): messages new
        to this storage, edits of messages it loaded or saved from this object, deletions
        of those no longer in ``session.messages`` (``kvsessions.sessions.message_changes``).
        True when stored; False, with nothing written, when the session was deleted since
        this object was loaded or saved here (or is being deleted). Nothing is written when
        any document is invalid or two messages share an id; messages this object never
        held are kept, and a message another writer deleted is not stored again. With
        ``expected_revision`` (e.g. ``session.revision``), nothing is written and
        ``RevisionConflictError`` raised unless the stored head is at that revision (0: no
        head yet)."""
        check_expected_revision(expected_revision)
        saved = self._saved(session)
        plan = plan_save(session, saved.messages)
        messages = [self._message_item(session.session_id, m) for m in plan.new]
        edits = [self._message_item(session.session_id, m) for m in plan.edited]
        removed = [message_key(session.session_id, m) for m in plan.removed]
        mine = session_to_document(session)
        if plan.changes_stored:  # the stored session changes: it counts as updated now
            mine["updated_at"] = format_timestamp(max(session.updated_at, utc_now()))
        self._documents.encode(session_key(session.session_id), mine)  # raises if invalid
        await self._index_state.before_write()
        head: Head | None = None
        if not self._creates_unread(session.session_id, saved, expected_revision):
            head = await self._read_head(session.session_id)
            if is_stale(head, saved):
                return False
            check_revision(f"session {session.session_id!r}", expected_revision,
                           None if head is None else head[1])
        return await outlive_cancellation(
            self._save(session, saved, plan, (messages, edits, removed), mine, head,
                       expected_revision))

    def _creates_unread(self, session_id: str, saved: SavedState,
                        expected_revision: int | None) -> bool:
        """Whether a save may first try to create the head without reading it: an object
        never stored here, no revision but "none yet" expected, and a store that creates
        head, entries and messages in one transaction (a failed try writes nothing; the save
        then reads the head and goes on as usual). A new session is then one store call."""
        return (saved.base is None and expected_revision in (None, 0)
                and self._raw.atomic_compare_and_set_with
                and encode_id(session_id) == session_id)  # no legacy key to look for

    def _message_item(self, session_id: str, message: ChatMessage) -> tuple[str, bytes]:
        key = check_key(message_key(session_id, message.message_id))
        return key, self._documents.encode(key, self._message_document(session_id, message))

    async def _save(self, session: ChatSession, saved: SavedState, plan: SavePlan,
                    writes: tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], list[str]],
                    mine: dict[str, Any], head: Head | None,
                    expected_revision: int | None = None) -> bool:
        """The writes of a save, run to the end even when the caller is cancelled, so that
        no message is left stored and uncounted. The head first (counting the new messages,
        as ``kvsessions.sessions.message_edits`` explains), then the messages, then the
        count of what was not created or was removed. Where the store writes a head and
        other keys in one transaction, the first try creates the messages in the head
        change's (counted exactly when they exist); should one be stored already, or the
        head have changed, the order above follows from a fresh read."""
        messages, edits, removals = writes
        together = (self._raw.atomic_compare_and_set_with
                    and 0 < len(messages) <= CREATE_TOGETHER)
        head_key = session_key(session.session_id)
        while True:
            if is_stale(head, saved):
                return False
            check_revision(f"session {session.session_id!r}", expected_revision,
                           None if head is None else head[1])
            if head is None:
                document = next_revision({**mine, "message_count": len(messages)}, None)
            else:
                current = head[1]
                document = merged_head(current, mine, saved.base, len(messages))
                if document == current:
                    together = False
                    break
                next_revision(document, current)
            encoded = self._documents.encode(head_key, document)
            if await self._index.change(session.session_id, head, document, encoded,
                                        messages if together else None):
                break
            together = False
            head = await self._read_head(session.session_id)
        if (messages and not together
                and await self._create_counted(session.session_id, messages) is None):
            return False
        await self._store_edits(edits)
        removed = await self._raw.delete_many(removals) if removals else 0
        recounted = await self._recount(session.session_id, -removed)
        plan.settle(saved.messages)
        saved.base = head_fields(mine)
        session.updated_at = saved.base["updated_at"]
        final = recounted or document
        session.message_count = final["message_count"]
        session.revision = final["revision"]
        session.user_id, session.app_name = final.get("user_id"), final.get("app_name")
        return True

    async def _create_messages(self, messages: list[tuple[str, bytes]]) -> list[str]:
        """Store each message unless its key is taken; the keys this call created. A failure
        removes what this call created (its caller then takes the count back)."""
        created: list[str] = []
        failure: BaseException | None = None
        for start in range(0, len(messages), _WRITE_CONCURRENCY):
            chunk = messages[start:start + _WRITE_CONCURRENCY]
            results = await asyncio.gather(
                *(self._raw.put_if_absent(key, value) for key, value in chunk),
                return_exceptions=True)
            for (key, _), result in zip(chunk, results, strict=True):
                if result is True:
                    created.append(key)
                elif isinstance(result, BaseException):
                    failure = failure or result
            if failure is not None:
                await self._remove(created)
                raise failure
        return created

    async def _remove(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            await self._raw.delete_many(keys[start:start + _DELETE_BATCH])

    async def append_message(self, session_id: str, message: ChatMessage) -> None:
        """Store one message of an existing session and count it in the head: one get, one
        message write and one compare-and-set, whatever the length of the history. Raises
        ``SessionNotFoundError`` when there is no such session, or it is deleted meanwhile
        (the message is then removed again). A message whose id is already stored is left as
        it is and not counted again, so a retried append changes nothing."""
        key = message_key(session_id, message.message_id)
        value = self._documents.encode(key, self._message_document(session_id, message))
        await self._index_state.before_write()
        head = await self._read_head(session_id)
        if head is None or head[1]["status"] == DELETING:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store!r}")
        await outlive_cancellation(self._append(session_id, key, value, message, head))

    async def _append(self, session_id: str, key: str, value: bytes, message: ChatMessage,
                      head: Head | None) -> None:
        await self._append_counted(session_id, [(key, value)], message.created_at, head)

    async def _read_head(self, session_id: str) -> Head | None:
        """The head of ``session_id`` as stored (any status), or None. A head found only under
        the key an earlier release used for this id raises ``legacy_key_error``."""
        key = session_key(session_id)
        value = await self._raw.get(key)
        if value is not None:
            document = self._documents.decode(key, value)
            if document.get("session_id") == session_id:
                return value, document
        elif encode_id(session_id) == session_id:
            return None
        legacy_key = SESSION_PREFIX + session_id
        legacy = await self._raw.get(legacy_key)
        if value is not None or (legacy is not None and self._documents.decode(
                legacy_key, legacy).get("session_id") == session_id):
            raise legacy_key_error(f"session {session_id!r}")
        return None

    async def load_session(
        self, session_id: str, *, last_messages: int | None = None,
        on_damaged: DamagedPolicy | None = None,
    ) -> ChatSession | None:
        """The session with all its messages (or only the latest ``last_messages``), or None.

        A full load reports ``message_count`` as the number of messages stored (with
        ``on_damaged="skip"``: readable ones); a partial load reports the head's count (see
        the module docstring). A damaged head always raises."""
        if last_messages is not None:
            check_limit(last_messages, "last_messages")
        handling = self._handling(on_damaged)
        key = session_key(session_id)
        stored = await self._read_head(session_id)
        if stored is None or stored[1]["status"] == DELETING:
            return None
        head = stored[1]
        session = document_to_session(head, key=key)
        if last_messages is None:
            session.messages = await self._scan_messages(message_prefix(session_id), handling)
            session.message_count = len(session.messages)
        else:
            session.messages = await self.load_messages(session_id, limit=last_messages,
                                                        on_damaged=handling.policy)
            session.message_count = max(session.message_count, len(session.messages))
        saved = self._saved(session)
        remember(saved.messages, session.messages)
        saved.base = head_fields(head)
        return session

    async def load_messages(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        before: str | None = None,
        after: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        on_damaged: DamagedPolicy | None = None,
    ) -> list[ChatMessage]:
        """A page of a session's messages, in conversation order, by message id (exclusive).

        With only ``after``: the first ``limit`` messages after it (paging forwards). Otherwise
        the latest ``limit`` messages (before ``before``, after ``after``, when given): the chat
        window, and paging backwards with ``before=<oldest message loaded>.message_id``. Only the
        page is read, never the rest of the history. ``since`` (inclusive) and ``until``
        (exclusive) keep the messages whose ``created_at`` is in that window, reading only
        the key range its ids' times span (``kvsessions.sessions.message_times``)."""
        if limit is not None:
            check_limit(limit, "limit")
        handling = self._handling(on_damaged)
        window = TimeWindow(since, until)
        prefix = message_prefix(session_id)
        after_key = None if after is None else message_key(session_id, after)
        before_key = None if before is None else message_key(session_id, before)
        forwards = after_key is not None and before_key is None
        lower = max((k for k in (after_key, window.lower_key(session_id)) if k is not None),
                    default=None)
        upper = min((k for k in (before_key, window.upper_key(session_id)) if k is not None),
                    default=None)
        if forwards:
            return await self._scan_messages(prefix, handling, start_after=lower, limit=limit,
                                             stop_at=upper, keep=window.keep())
        messages = await self._scan_messages(prefix, handling, start_after=upper, limit=limit,
                                             reverse=True, stop_at=lower, keep=window.keep())
        messages.reverse()
        return messages

    def _listed(self, document: dict[str, Any], key: str) -> ChatSession:
        """A head read by a listing, as a session object that this storage knows is stored
        (so that saving it after its session was deleted does not bring it back)."""
        session = document_to_session(document, key=key)
        self._saved(session).base = head_fields(document, decoded=True)
        return session

    async def search_messages(self, query: str, *, session_id: str | None = None,
                              user_id: str | None = None, limit: int = 20) -> list[MessageHit]:
        """Messages whose content holds every word of ``query``, best first: in one session,
        or in the sessions of one owner, when given (``kvsessions.sessions.search``)."""
        return await search_messages(self._raw, query, session_id=session_id, user_id=user_id,
                                     limit=limit, validate=self._documents.validate_reads)

    async def delete_session(self, session_id: str) -> bool:
        """Remove the session and all its messages; True if anything was there. The head is
        marked ``deleting`` first (appends and saves then fail instead of writing), then the
        messages go, then the head, so an interrupted delete is finished by running it
        again."""
        return await outlive_cancellation(self._delete_session(session_id))

    async def _delete_session(self, session_id: str) -> bool:
        head_key = session_key(session_id)
        marked: bytes | None = None
        while (head := await self._read_head(session_id)) is not None:
            stored, current = head
            if current["status"] == DELETING:
                marked = stored
                break
            mark = self._documents.encode(
                head_key, next_revision({**current, "status": DELETING}, current))
            if await self._raw.compare_and_set(head_key, stored, mark):
                marked = mark
                break
        existed = marked is not None
        deleted = 0
        batch: list[str] = []
        async for key, _ in self._raw.scan(message_prefix(session_id)):
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                deleted += await self._raw.delete_many(batch)
                batch = []
        if batch:
            deleted += await self._raw.delete_many(batch)
        await self._raw.delete(session_state_key(session_id))  # before the head: see state.py
        last_mark = marked
        while marked is not None and not await self._raw.compare_and_set(head_key, marked,
                                                                        None):
            head = await self._read_head(session_id)  # another deleter's mark, or gone
            marked = head[0] if head is not None and head[1]["status"] == DELETING else None
            last_mark = marked or last_mark
        if last_mark is not None:
            await self._remove_entries(session_id, self._documents.decode(head_key, last_mark))
        return existed or deleted > 0

    async def _remove_entries(self, session_id: str, mark: dict[str, Any]) -> None:
        """Remove the entries a deleted head had (its status before the mark is not kept, so
        those of every status), then settle them (``kvsessions.sessions.index``)."""
        entries = sorted(every_entry(mark))
        await self._raw.delete_many(entries)
        await self._index.settle(session_id, entries)

    def _read_head_document(self, key: str, value: bytes) -> dict[str, Any]:
        """A stored head, decoded and checked once (``ValidationError`` naming what is wrong:
        a listing that silently left out a damaged session would hide the damage)."""
        document = decode_document(value, key=key)
        if self._documents.validate_reads:
            validate_document(document, key=key)
        try:
            document["status"], document["updated_at"], document["session_id"]
        except (KeyError, TypeError):
            validate_document(document, key=key)  # raises, naming the field
            raise
        return document

    # ------------------------------------------------------------------ heads and state

    async def update_session(self, session_id: str, *,
                             metadata: Mapping[str, Any] | None = None,
                             status: str | None = None, model: str | None = None,
                             expected_revision: int | None = None) -> ChatSession:
        """Change the head only (no messages read): ``metadata`` merged key by key (a value
        None removes the key), ``status``, ``model``; atomic under concurrent writers (see
        ``kvsessions.sessions.head_updates``). The head as stored after it (``messages``
        empty). ``SessionNotFoundError``; ``RevisionConflictError`` when
        ``expected_revision`` is given and the head is at another revision."""
        change = HeadChange(metadata, status, model)
        await self._index_state.before_write()
        document = await outlive_cancellation(update_head(
            self._documents, self._index, self._read_head, session_id, change,
            expected_revision))
        return self._listed(document, session_key(session_id))

    async def get_state(self, scope: StateScope) -> State:
        """The state of ``scope`` (``State()``, revision 0, when never written)."""
        return await self._states.get(scope)

    async def update_state(self, scope: StateScope, delta: Mapping[str, Any], *,
                           expected_revision: int | None = None) -> State:
        """Merge ``delta`` into the state of ``scope`` (a value None removes its key),
        atomically (``kvsessions.sessions.state``); the state as stored after it."""
        return await self._states.update(scope, delta, expected_revision)

    async def set_state(self, scope: StateScope, value: Mapping[str, Any], *,
                        expected_revision: int | None = None) -> State:
        """Replace the state of ``scope`` with ``value``, atomically; the state stored."""
        return await self._states.set(scope, value, expected_revision)

    async def delete_state(self, scope: StateScope, *,
                           expected_revision: int | None = None) -> bool:
        """Remove the state of ``scope`` (it then reads as ``State()``, revision 0); True if
        this call removed it. ``RevisionConflictError``, nothing removed, when
        ``expected_revision`` is given and the state is at another revision."""
        return await self._states.delete(scope, expected_revision)

    def has_changes(self, session: ChatSession) -> bool:
        """Whether ``save_session(session)`` has anything to write: messages not stored yet,
        edited or removed, or head fields changed since this storage last loaded, listed or
        saved the object."""
        saved = self._saved(session)
        if saved.base is None or not plan_save(session, saved.messages).empty:
            return True
        return head_fields(session_to_document(session)) != saved.base

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
        handling: DamagedHandling,
        *,
        start_after: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
        stop_at: str | None = None,
        keep: Callable[[ChatMessage], bool] | None = None,
    ) -> list[ChatMessage]:
        """Messages of one scan, each parsed once (``kvsessions.sessions.message_scan``)."""
        return await scan_messages(self._raw, self._documents, prefix, handling,
                                   start_after=start_after, limit=limit, reverse=reverse,
                                   stop_at=stop_at, keep=keep)

    def _handling(self, on_damaged: str | None) -> DamagedHandling:
        """The damaged-data policy of one call: its own, else this storage's."""
        if on_damaged is None or on_damaged == self._damaged.policy:
            return self._damaged
        return DamagedHandling(check_damaged_policy(on_damaged), self._damaged.report)

    def _saved(self, session: ChatSession) -> SavedState:
        registry: dict[object, SavedState] | None = getattr(session, _SAVED_ATTRIBUTE, None)
        if registry is None:
            registry = {}
            setattr(session, _SAVED_ATTRIBUTE, registry)
        saved = registry.get(self._token)
        if saved is None:
            saved = registry[self._token] = SavedState()
        return saved
