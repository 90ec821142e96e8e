"""Editing a session's stored messages one at a time: append several, read one, update,
delete, pop the latest, clear them all. A mixin of ``SessionStorage``.

Every head change is a ``compare_and_set`` from the head just read
(``kvsessions.sessions.heads``), with the index entries written before and removed after it
(``kvsessions.sessions.index``). ``message_count`` stays exact under concurrent writers in
any number of processes, because a message is counted *before* it exists and uncounted
*after* it is gone:

* a writer adding messages first adds them to the head's count (which also checks that the
  session is there and not being deleted), then stores each with ``put_if_absent``, then
  reads the head again: it takes back the count of those already stored (a retried append),
  and, when the session is being deleted meanwhile, removes what it stored (the delete may
  have scanned before it);
* a writer removing messages removes them first and then takes exactly what it removed off
  the count (``delete`` / ``delete_many`` counted them, or ``compare_and_set(key, read,
  None)`` won), so of two writers removing one message only one counts it.

Where the store writes a head and other keys in one transaction
(``atomic_compare_and_set_with``; for an append, ``atomic_with`` its messages: a Redis
Cluster writes the keys of the head's slot in one), an append first tries the head change
that counts its messages and their creation as one call: the messages then exist exactly
when they are counted, which gives the same guarantee; a head changed meanwhile or a message
stored already (a retried append) makes it fall back to the order above, from a fresh read. There
an update and a pop are one read and one transaction too: the message's compare-and-set
(``swap``: rewritten, or removed if it is still the value read) and the head change, all or
nothing, repeated from fresh reads when another writer got in first. A pop and a concurrent
``delete_message`` of one message then count it out once: the pop's transaction finds it
gone and writes nothing.

So the count never falls below the messages stored, nor does a removal find it short of what
it removed (a count that would go below 0 stays 0: only a message stored by a release that
counted after writing, and whose writer was killed, can do that). A writer killed between
counting and storing leaves the count one above what is stored, until a full
``load_session`` (which reports what is stored) and a save fix it.

Every change moves the head's ``updated_at`` forward (to the latest appended message's
``created_at``, or to now for an update or a removal): the session counts as changed, and
listings show it first. Removals on a session that is not stored (or being deleted) find
nothing to remove (False, None, 0); writes that need the session (``append_messages``,
``update_message``) raise ``SessionNotFoundError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from kvsessions.documents.codec import format_timestamp, message_to_document, parse_timestamp
from kvsessions.documents.keys import encode_id, message_key, message_prefix, session_key
from kvsessions.documents.models import ChatMessage, utc_now
from kvsessions.errors import (
    InvalidValueError,
    MessageNotFoundError,
    SessionNotFoundError,
    ValidationError,
)
from kvsessions.kv.base import KVStore, outlive_cancellation
from kvsessions.kv.values import check_key
from kvsessions.sessions.damaged import DamagedHandling, DamagedPolicy
from kvsessions.sessions.heads import DELETING, Head, check_revision, next_revision
from kvsessions.sessions.index import IndexState, SessionIndex
from kvsessions.sessions.message_scan import parse_message, read_message
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["CREATE_TOGETHER", "MessageEdits", "removal_change", "touched"]

#: Keys one ``delete_many`` of ``clear_messages`` removes (the head is updated after each).
_CLEAR_BATCH = 500
#: Messages at most that a head change creates in its own transaction (where the store has
#: one, ``atomic_with``); more are counted first, then stored.
CREATE_TOGETHER = 1000
#: Edited messages one save rewrites at once.
_EDIT_CONCURRENCY = 32

HeadChange = Callable[[dict[str, Any]], dict[str, Any]]


def touched(document: dict[str, Any], moment: datetime) -> dict[str, Any]:
    """``document`` with ``updated_at`` moved forward to ``moment`` (never back)."""
    updated = parse_timestamp(document["updated_at"], path="updated_at")
    if moment > updated:
        document["updated_at"] = format_timestamp(moment)
    return document


def removal_change(removed: int, moment: datetime) -> HeadChange:
    """The head change of a writer that removed ``removed`` message documents at ``moment``."""
    def change(current: dict[str, Any]) -> dict[str, Any]:
        document = dict(current)
        document["message_count"] = max(0, current["message_count"] - removed)
        return touched(document, moment)
    return change


def _check_id(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValueError(f"{name} must be a non-empty string, not {value!r:.60}")
    return value


class MessageEdits:
    """The message-editing half of ``SessionStorage`` (see the module docstring)."""

    store: KVStore
    _documents: ValidatingStore
    _raw: KVStore
    _index: SessionIndex
    _index_state: IndexState

    if TYPE_CHECKING:
        async def _read_head(self, session_id: str) -> Head | None: ...

        async def _create_messages(self, messages: list[tuple[str, bytes]]) -> list[str]: ...

        async def _remove(self, keys: list[str]) -> None: ...

        def _message_document(self, session_id: str,
                              message: ChatMessage) -> dict[str, Any]: ...

        def _handling(self, on_damaged: str | None) -> DamagedHandling: ...

    # ------------------------------------------------------------------ the head

    async def _change_head(self, session_id: str, head: Head | None,
                           change: HeadChange) -> dict[str, Any] | None:
        """Apply ``change`` to the head by compare-and-set, from ``head`` and then from fresh
        reads, keeping the index rules; the head written (or left as it was, when ``change``
        changes nothing), or None when the session is gone or being deleted."""
        key = session_key(session_id)
        while True:
            if head is None or head[1]["status"] == DELETING:
                return None
            current = head[1]
            document = change(current)
            if document == current:
                return current
            next_revision(document, current)
            encoded = self._documents.encode(key, document)
            if await self._index.change(session_id, head, document, encoded):
                return document
            head = await self._read_head(session_id)

    async def _append_counted(self, session_id: str, items: list[tuple[str, bytes]],
                              latest: datetime, head: Head | None,
                              expected_revision: int | None = None) -> dict[str, Any]:
        """Count ``items`` in the head (moving ``updated_at`` to ``latest``), then store them
        (see the module docstring); the head that counted them. ``SessionNotFoundError`` when
        the session is gone; ``RevisionConflictError``, nothing written, when
        ``expected_revision`` is given and the head is at another one."""
        def count_in(current: dict[str, Any]) -> dict[str, Any]:
            check_revision(f"session {session_id!r}", expected_revision, current)
            document = dict(current)
            document["message_count"] = current["message_count"] + len(items)
            return touched(document, latest)

        if (0 < len(items) <= CREATE_TOGETHER and head is not None
                and head[1]["status"] != DELETING
                and self._raw.atomic_with(session_key(session_id), [key for key, _ in items])):
            # The store changes the head and creates the messages in one transaction: they
            # are counted exactly when they exist, so no removal finds the count short. A
            # head changed meanwhile, or a message stored already (a retried append), takes
            # the order below from a fresh read.
            document = next_revision(count_in(head[1]), head[1])
            encoded = self._documents.encode(session_key(session_id), document)
            if await self._index.change(session_id, head, document, encoded, items):
                return document
            head = await self._read_head(session_id)
        counted = await self._change_head(session_id, head, count_in)
        if counted is None or await self._create_counted(session_id, items) is None:
            raise SessionNotFoundError(
                f"session {session_id!r} was deleted while messages were appended")
        return counted

    async def _create_counted(self, session_id: str,
                              items: list[tuple[str, bytes]]) -> list[str] | None:
        """Store ``items``, which the head already counts, and read the head again: count
        out those already stored; None when the session went away meanwhile (what this call
        stored is then removed again)."""
        try:
            created = await self._create_messages(items)
        except BaseException:
            await self._recount(session_id, -len(items))  # what it created, it removed
            raise
        head = await self._read_head(session_id)
        if head is None or head[1]["status"] == DELETING:
            await self._remove(created)
            return None
        await self._recount(session_id, len(created) - len(items), head)
        return created

    async def _recount(self, session_id: str, delta: int,
                       head: Head | None = None) -> dict[str, Any] | None:
        """Add ``delta`` to the count (no other change); the head written, None if none."""
        if not delta:
            return None

        def recount(current: dict[str, Any]) -> dict[str, Any]:
            return {**current, "message_count": max(0, current["message_count"] + delta)}

        return await self._change_head(session_id, head or await self._read_head(session_id),
                                       recount)

    async def _live_head(self, session_id: str) -> Head | None:
        await self._index_state.before_write()
        head = await self._read_head(session_id)
        if head is None or head[1]["status"] == DELETING:
            return None
        return head

    async def _counted_removal(self, session_id: str, head: Head, removed: int) -> None:
        """Take ``removed`` messages off the count and move ``updated_at`` to now."""
        if removed:
            await self._change_head(session_id, head, removal_change(removed, utc_now()))

    async def _store_edits(self, edits: list[tuple[str, bytes]]) -> None:
        """Rewrite edited messages a save found (each by compare-and-set from a fresh read:
        the last writer wins, none is torn); one another writer deleted meanwhile stays
        deleted (writing it again would bring back a message nobody counts)."""
        for start in range(0, len(edits), _EDIT_CONCURRENCY):
            chunk = edits[start:start + _EDIT_CONCURRENCY]
            results = await asyncio.gather(*(self._store_edit(key, value)
                                             for key, value in chunk), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _store_edit(self, key: str, value: bytes) -> None:
        while (stored := await self._raw.get(key)) is not None and stored != value:
            if await self._raw.compare_and_set(key, stored, value):
                return

    # ------------------------------------------------------------------ appending

    async def append_messages(self, session_id: str, messages: Sequence[ChatMessage]) -> None:
        """Store several messages of an existing session and count them in one head update
        (each message one ``put_if_absent``, sent together). Like ``append_message``: a
        message whose id is already stored is left as it is and not counted again, so a
        retried call changes nothing; ``SessionNotFoundError`` when there is no such session
        (what this call stored is then removed again); every message is checked before
        anything is written, and two messages with one id raise ``ValidationError``."""
        items, latest = self._encoded_messages(session_id, messages)
        if latest is None:
            return
        head = await self._live_head(session_id)
        if head is None:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store!r}")
        await outlive_cancellation(self._append_counted(session_id, items, latest, head))

    def _encoded_messages(self, session_id: str, messages: Sequence[ChatMessage]
                          ) -> tuple[list[tuple[str, bytes]], datetime | None]:
        """Each message's key and document, checked before anything is written, and the
        latest ``created_at`` (None: no messages)."""
        items: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        latest: datetime | None = None
        for message in messages:
            key = check_key(message_key(session_id, _check_id(message.message_id,
                                                              "message_id")))
            if key in seen:
                raise ValidationError(
                    f"two messages of session {session_id!r} have the id "
                    f"{message.message_id!r}", key=key, path="message_id", kind="message")
            seen.add(key)
            items.append((key, self._documents.encode(
                key, self._message_document(session_id, message))))
            if latest is None or message.created_at > latest:
                latest = message.created_at
        return items, latest

    # ------------------------------------------------------------------ reading one

    async def load_message(self, session_id: str, message_id: str, *,
                           on_damaged: DamagedPolicy | None = None) -> ChatMessage | None:
        """The message ``message_id`` of ``session_id``, or None: one get. A damaged document
        raises ``ValidationError`` naming its key, or reads as None with
        ``on_damaged="skip"`` (reported; see ``kvsessions.sessions.damaged``)."""
        key = check_key(message_key(_check_id(session_id, "session_id"),
                                    _check_id(message_id, "message_id")))
        handling = self._handling(on_damaged)
        value = await self._raw.get(key)
        return None if value is None else read_message(self._documents, key, value, handling)

    # ------------------------------------------------------------------ editing one

    async def update_message(
        self,
        session_id: str,
        message_id: str,
        *,
        content: str | None = None,
        role: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ChatMessage:
        """Change a stored message's ``content``, ``role`` and/or ``metadata`` (replaced as a
        whole) and return it as stored. Atomic against other writers of the message (a
        compare-and-set of the document just read; the last update wins, none is torn), and
        it moves the session's ``updated_at`` to now. ``MessageNotFoundError`` when there is
        no such message (a damaged one raises ``ValidationError``: update needs its fields),
        ``SessionNotFoundError`` when there is no such session. Nothing is written when
        nothing changes or the result is invalid."""
        key = check_key(message_key(_check_id(session_id, "session_id"),
                                    _check_id(message_id, "message_id")))
        changes: dict[str, Any] = {}
        if content is not None:
            changes["content"] = content
        if role is not None:
            changes["role"] = role
        if metadata is not None:
            changes["metadata"] = dict(metadata)
        if self._raw.atomic_compare_and_set_with:
            return await outlive_cancellation(
                self._update_together(session_id, message_id, key, changes))
        head = await self._live_head(session_id)
        if head is None:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.store!r}")
        return await outlive_cancellation(
            self._update(session_id, message_id, key, changes, head))

    async def _read_together(self, session_id: str, key: str) -> tuple[Head | None,
                                                                        bytes | None]:
        """The live head (None: gone or being deleted) and the value of ``key``, in one
        ``get_many``."""
        await self._index_state.before_write()
        value, stored = await self._raw.get_many([session_key(session_id), key])
        return await self._live_read(session_id, value), stored

    async def _read_with_latest(self, session_id: str) -> tuple[Head | None,
                                                                tuple[str, bytes] | None]:
        """The live head (None: gone or being deleted) and the latest message, in one
        ``get_and_last``."""
        await self._index_state.before_write()
        value, latest = await self._raw.get_and_last(session_key(session_id),
                                                      message_prefix(session_id))
        return await self._live_read(session_id, value), latest

    async def _live_read(self, session_id: str, value: bytes | None) -> Head | None:
        """The live head of ``session_id`` from ``value``, its head key's value as read."""
        head: Head | None = None
        if value is not None:
            head_key = session_key(session_id)
            document = self._documents.decode(head_key, value)
            if document.get("session_id") == session_id:
                head = (value, document)
        if head is None and (value is not None or encode_id(session_id) != session_id):
            head = await self._read_head(session_id)  # what a legacy key makes of it
        if head is None or head[1]["status"] == DELETING:
            return None
        return head

    def _edited(self, session_id: str, message_id: str, key: str, stored: bytes | None,
                changes: dict[str, Any]) -> tuple[ChatMessage, ChatMessage, bytes | None]:
        """The stored message, the message with ``changes``, and its new value (None when
        nothing changes)."""
        if stored is None:
            raise MessageNotFoundError(f"no message {message_id!r} in session {session_id!r}")
        message = parse_message(self._documents, key, stored)
        updated = dataclasses.replace(message, **changes)
        document = message_to_document(updated)
        if orjson.dumps(document) == orjson.dumps(message_to_document(message)):
            return message, message, None
        return message, updated, self._documents.encode(key, document)

    async def _update_together(self, session_id: str, message_id: str, key: str,
                               changes: dict[str, Any]) -> ChatMessage:
        """``update_message`` on a store with transactions: one read of the head and the
        message, then one transaction of both (see the module docstring)."""
        while True:
            head, stored = await self._read_together(session_id, key)
            if head is None:
                raise SessionNotFoundError(f"no session {session_id!r} in {self.store!r}")
            message, updated, value = self._edited(session_id, message_id, key, stored,
                                                   changes)
            if value is None:
                return message
            assert stored is not None
            current = head[1]
            document = touched(dict(current), utc_now())
            encoded = head[0]
            if document != current:
                next_revision(document, current)
                encoded = self._documents.encode(session_key(session_id), document)
            if await self._index.change(session_id, head, document, encoded,
                                        swap=[(key, stored, value)]):
                return updated

    async def _update(self, session_id: str, message_id: str, key: str,
                      changes: dict[str, Any], head: Head) -> ChatMessage:
        while True:
            stored = await self._raw.get(key)
            message, updated, value = self._edited(session_id, message_id, key, stored,
                                                   changes)
            if value is None:
                return message
            if await self._raw.compare_and_set(key, stored, value):
                break
        if await self._change_head(session_id, head,
                                   lambda current: touched(dict(current), utc_now())) is None:
            raise SessionNotFoundError(
                f"session {session_id!r} was deleted while a message was updated")
        return updated

    # ------------------------------------------------------------------ removing

    async def delete_message(self, session_id: str, message_id: str) -> bool:
        """Remove one message by id (damaged or not: it is not read) and count it out of the
        head; True if this call removed it. Of several concurrent deletes of one message
        exactly one returns True. False, with nothing written, when there is no such message
        or session."""
        key = check_key(message_key(_check_id(session_id, "session_id"),
                                    _check_id(message_id, "message_id")))
        head = await self._live_head(session_id)
        if head is None:
            return False
        return await outlive_cancellation(self._delete_one(session_id, key, head))

    async def _delete_one(self, session_id: str, key: str, head: Head) -> bool:
        removed = await self._raw.delete(key)
        await self._counted_removal(session_id, head, int(removed))
        return removed

    async def pop_message(self, session_id: str, *,
                          on_damaged: DamagedPolicy | None = None) -> ChatMessage | None:
        """Remove the latest message and return it (None when there is none, or no such
        session). Concurrent poppers never return one message twice: each removes the
        message it read by ``compare_and_set(key, read, None)``, and one that lost reads the
        next latest. A damaged latest document raises ``ValidationError`` naming its key and
        stays; with ``on_damaged="skip"`` it is removed (it is the latest: popping it is what
        was asked), reported, and the call returns None."""
        handling = self._handling(on_damaged)
        prefix = message_prefix(session_id)
        together = self._raw.atomic_compare_and_set_with
        head = None if together else await self._live_head(session_id)
        if not together and head is None:
            return None
        while True:
            if together:
                # the head and the latest message, read in one call, removed in one
                # transaction (see the module docstring)
                head, latest = await self._read_with_latest(session_id)
                if head is None:
                    return None
            else:
                latest = await self._latest(prefix)
            if latest is None:
                return None
            key, value = latest
            damage: ValidationError | None = None
            try:
                message: ChatMessage | None = parse_message(self._documents, key, value)
            except ValidationError as error:
                if not handling.skips:
                    raise
                message, damage = None, error
            assert head is not None
            pop = self._pop_together if together else self._pop
            if await outlive_cancellation(pop(session_id, key, value, head)):
                if damage is not None:
                    handling.damaged(key, damage)
                return message

    async def _latest(self, prefix: str) -> tuple[str, bytes] | None:
        latest: tuple[str, bytes] | None = None
        async for page in self._raw.scan_pages(prefix, limit=1, reverse=True):
            latest = page[0]
        return latest

    async def _pop_together(self, session_id: str, key: str, value: bytes,
                            head: Head) -> bool:
        """Remove the message ``key`` if it is still ``value`` and count it out, in one
        transaction; False when it or the head changed meanwhile."""
        document = next_revision(removal_change(1, utc_now())(head[1]), head[1])
        encoded = self._documents.encode(session_key(session_id), document)
        return await self._index.change(session_id, head, document, encoded,
                                        swap=[(key, value, None)])

    async def _pop(self, session_id: str, key: str, value: bytes, head: Head) -> bool:
        if not await self._raw.compare_and_set(key, value, None):
            return False  # another popper (or an update) got there first
        await self._counted_removal(session_id, head, 1)
        return True

    async def clear_messages(self, session_id: str) -> int:
        """Remove every message of the session and keep the session (its head, metadata and
        status); the number of messages this call removed, which it counts out of the head
        (so the count is exact even beside concurrent appends). 0 when there is no such
        session."""
        head = await self._live_head(session_id)
        if head is None:
            return 0
        return await outlive_cancellation(self._clear(session_id, head))

    async def _clear(self, session_id: str, head: Head) -> int:
        removed = 0
        batch: list[str] = []
        async for key, _ in self._raw.scan(message_prefix(session_id)):
            batch.append(key)
            if len(batch) >= _CLEAR_BATCH:
                removed += await self._clear_batch(session_id, batch, head)
                batch = []
        if batch:
            removed += await self._clear_batch(session_id, batch, head)
        return removed

    async def _clear_batch(self, session_id: str, keys: list[str], head: Head) -> int:
        removed = await self._raw.delete_many(keys)
        await self._counted_removal(session_id, head, removed)
        return removed
