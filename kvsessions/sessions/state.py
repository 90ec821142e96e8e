"""State documents beside sessions: arbitrary JSON state of one session, of one user of an
application, or of an application (what agent frameworks keep as session, user and app state).

Each scope is one ``state`` document (keys in ``kvsessions.documents.keys``; schema
``state.v1.json``) with a ``revision`` that grows by 1 on every write. Every write is a
``compare_and_set`` from the document just read, repeated from a fresh read when another writer
got in first, so two writers merging different keys both keep theirs; ``expected_revision``
turns a write into "only if nobody wrote since I read revision N" (``RevisionConflictError``
otherwise, nothing written).

Session state lives and dies with its session: a write needs the session to exist, and a
write that finds, after it, that the session is being deleted (or gone) takes itself back and
raises ``SessionNotFoundError``; ``delete_session`` removes the document after the session's
messages, so no state outlives its session (except when a writer is killed between its write
and that check).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kvsessions.documents.codec import format_timestamp, parse_timestamp
from kvsessions.documents.keys import app_state_key, session_state_key, user_state_key
from kvsessions.documents.models import utc_now
from kvsessions.errors import InvalidValueError, SessionNotFoundError
from kvsessions.kv.base import KVStore, outlive_cancellation
from kvsessions.sessions.heads import DELETING, Head, check_expected_revision, check_revision
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["State", "StateDocuments", "StateScope", "check_owner_id", "merge_delta"]

#: The longest id the schemas accept.
_MAX_ID = 200

ScopeKind = Literal["session", "user", "app"]


def check_owner_id(value: object, name: str) -> str:
    """A session id, user id or application name: a non-empty string of at most 200
    characters (what the schemas accept), or ``InvalidValueError`` naming the argument."""
    if type(value) is not str or not value or len(value) > _MAX_ID:
        raise InvalidValueError(f"{name} must be a non-empty string of at most {_MAX_ID} "
                                f"characters, not {str(value)[:60]!r}")
    return value


@dataclass(frozen=True)
class StateScope:
    """Whose state: build it with ``StateScope.session(session_id)``,
    ``StateScope.user(app_name, user_id)`` or ``StateScope.app(app_name)``."""

    kind: ScopeKind
    session_id: str | None = None
    app_name: str | None = None
    user_id: str | None = None

    @classmethod
    def session(cls, session_id: str) -> StateScope:
        return cls("session", session_id=check_owner_id(session_id, "session_id"))

    @classmethod
    def user(cls, app_name: str, user_id: str) -> StateScope:
        return cls("user", app_name=check_owner_id(app_name, "app_name"),
                   user_id=check_owner_id(user_id, "user_id"))

    @classmethod
    def app(cls, app_name: str) -> StateScope:
        return cls("app", app_name=check_owner_id(app_name, "app_name"))

    @property
    def key(self) -> str:
        """The key of this scope's state document."""
        if self.kind == "session" and self.session_id is not None:
            return session_state_key(self.session_id)
        if self.kind == "user" and self.app_name is not None and self.user_id is not None:
            return user_state_key(self.app_name, self.user_id)
        if self.kind == "app" and self.app_name is not None:
            return app_state_key(self.app_name)
        raise InvalidValueError(f"not a state scope: {self!r}; build one with "
                                "StateScope.session/user/app")

    def describe(self) -> str:
        if self.kind == "session":
            return f"the state of session {self.session_id!r}"
        if self.kind == "user":
            return f"the state of user {self.user_id!r} of app {self.app_name!r}"
        return f"the state of app {self.app_name!r}"

    def document_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"scope": self.kind}
        for name in ("session_id", "app_name", "user_id"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        return fields


@dataclass(frozen=True)
class State:
    """A scope's state as stored: ``value`` and its ``revision`` (0: never written, and then
    ``value`` is empty); ``updated_at`` of the last write (None: never written)."""

    value: dict[str, Any] = field(default_factory=dict)
    revision: int = 0
    updated_at: datetime | None = None


def merge_delta(current: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` with the keys of ``delta`` set, a value None removing its key (top-level
    keys only: a nested object in ``delta`` replaces the stored one whole)."""
    merged = dict(current)
    for name, value in delta.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _check_mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(type(k) is str for k in value):
        raise InvalidValueError(f"{name} must be a mapping with string keys, not "
                                f"{type(value).__name__}")
    return value


ReadHead = Callable[[str], Awaitable[Head | None]]
Change = Callable[[dict[str, Any]], dict[str, Any]]


class StateDocuments:
    """Reads and atomic writes of state documents on one storage's stores."""

    def __init__(self, documents: ValidatingStore, read_head: ReadHead) -> None:
        self._documents = documents
        self._raw: KVStore = documents.inner
        self._read_head = read_head

    async def get(self, scope: StateScope) -> State:
        key = _scope(scope).key
        value = await self._raw.get(key)
        return State() if value is None else _state(self._documents.decode(key, value))

    async def update(self, scope: StateScope, delta: Mapping[str, Any],
                     expected_revision: int | None) -> State:
        delta = dict(_check_mapping(delta, "delta"))
        return await self._write(scope, lambda value: merge_delta(value, delta),
                                 expected_revision)

    async def set(self, scope: StateScope, value: Mapping[str, Any],
                  expected_revision: int | None) -> State:
        new = dict(_check_mapping(value, "value"))
        return await self._write(scope, lambda _: dict(new), expected_revision)

    async def delete(self, scope: StateScope, expected_revision: int | None) -> bool:
        """Remove the state document of ``scope`` by compare-and-set from the document just
        read (so a write that came between is not lost silently: the delete reads again,
        and ``expected_revision`` refuses it); True if this call removed it."""
        key = _scope(scope).key
        check_expected_revision(expected_revision)
        return await outlive_cancellation(self._delete_loop(scope, key, expected_revision))

    async def _delete_loop(self, scope: StateScope, key: str,
                           expected_revision: int | None) -> bool:
        while True:
            stored = await self._raw.get(key)
            current = None if stored is None else self._documents.decode(key, stored)
            check_revision(scope.describe(), expected_revision, current)
            if stored is None:
                return False
            if await self._raw.compare_and_set(key, stored, None):
                return True

    async def _write(self, scope: StateScope, change: Change,
                     expected_revision: int | None) -> State:
        key = _scope(scope).key
        check_expected_revision(expected_revision)
        if scope.kind == "session" and scope.session_id is not None:
            await self._live_session(scope.session_id)
        return await outlive_cancellation(self._write_loop(scope, key, change,
                                                           expected_revision))

    async def _write_loop(self, scope: StateScope, key: str, change: Change,
                          expected_revision: int | None) -> State:
        while True:
            stored = await self._raw.get(key)
            current = None if stored is None else self._documents.decode(key, stored)
            check_revision(scope.describe(), expected_revision, current)
            old_value = {} if current is None else current["value"]
            new_value = change(old_value)
            if current is not None and new_value == old_value:
                return _state(current)  # nothing changes: no write, same revision
            document = {
                "kind": "state", "v": 1, **scope.document_fields(),
                "revision": 1 if current is None else current["revision"] + 1,
                "updated_at": format_timestamp(utc_now()), "value": new_value,
            }
            encoded = self._documents.encode(key, document)  # raises if invalid
            if await self._raw.compare_and_set(key, stored, encoded):
                break
        if scope.kind == "session" and scope.session_id is not None:
            head = await self._read_head(scope.session_id)
            if head is None or head[1]["status"] == DELETING:
                await self._raw.compare_and_set(key, encoded, None)
                raise SessionNotFoundError(f"session {scope.session_id!r} was deleted while "
                                           "its state was written")
        return _state(document)

    async def _live_session(self, session_id: str) -> None:
        head = await self._read_head(session_id)
        if head is None or head[1]["status"] == DELETING:
            raise SessionNotFoundError(f"no session {session_id!r}: session state needs "
                                       "its session")


def _scope(scope: object) -> StateScope:
    if not isinstance(scope, StateScope):
        raise InvalidValueError(f"scope must be a StateScope (StateScope.session/user/app), "
                                f"not {type(scope).__name__}")
    return scope


def _state(document: dict[str, Any]) -> State:
    return State(value=document["value"], revision=document["revision"],
                 updated_at=parse_timestamp(document["updated_at"], path="updated_at"))
