"""Google ADK's ``BaseSessionService`` on kvsessions: ``Runner(..., session_service=...)`` keeps
sessions, events and state on any store kvsessions runs on (``pip install 'kvsessions[adk]'``).

Where things go:

* an ADK session is a kvsessions session owned by its ``user_id`` and ``app_name`` (so
  listing by owner reads index entries, not every session), under the id
  ``{app_name}:{user_id}:{session_id}`` (``%`` and ``:`` inside each part written as ``%25``
  and ``%3A``), since ADK keys a session by all three: two users may each have a session
  ``s1``;
* each event is one kvsessions message: role ``user`` (author ``user``), ``tool`` (it holds a
  function response) or ``assistant``; its text as the content (``kvsessions show`` and
  ``export`` read the conversation); ``created_at`` its timestamp; and the whole event, as
  ADK serialises it, in the metadata under ``adk_event``;
* state: keys without a prefix in the session's state document (``StateScope.session``),
  ``user:`` keys in the user's (``StateScope.user``), ``app:`` keys in the application's
  (``StateScope.app``), each stored without its prefix; ``temp:`` keys are never stored.

``append_event`` refuses a stale writer as ADK's ``DatabaseSessionService`` does: a session
object carries the head revision it was read or last written at (ADK's storage marker), and the
event is appended only if the head is still at that revision (``append_messages_at``: the
check and the count are one compare-and-set), else ``StaleSessionError`` and nothing is
written. A session object without a marker (built by hand) is checked as ADK checks one: it is
stale when the stored session was updated after its ``last_update_time`` and its last event is
not the stored last event.

What is atomic: the event and the staleness check together (one head compare-and-set; the
event document is stored right after it), and each state document's delta (merged into the
document read and written by compare-and-set, again from a fresh read when another writer got
in first: concurrent writers of different keys keep both, of one key the last wins; a value
None is stored, as ADK does).
The three state deltas are written after the event, each on its own: a reader between them
may see the event before its state, and a process killed between them leaves the event
stored with part of its state. No store kvsessions runs on gives one transaction across
documents through the key-value contract, so this is as far as the stores allow.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson

from kvsessions.errors import MissingDependencyError, RevisionConflictError
from kvsessions.errors import SessionNotFoundError as StoredSessionNotFoundError

try:
    from google.adk.errors import StaleSessionError
    from google.adk.errors.already_exists_error import AlreadyExistsError
    from google.adk.errors.session_not_found_error import SessionNotFoundError
    from google.adk.events.event import Event
    from google.adk.sessions.base_session_service import (
        BaseSessionService,
        GetSessionConfig,
        ListSessionsResponse,
    )
    from google.adk.sessions.session import Session
    from google.adk.sessions.state import State as AdkState
    from google.genai import types
except ImportError as error:  # pragma: no cover - the extra is installed in the tests
    raise MissingDependencyError("google-adk", "adk",
                                 purpose="kvsessions.integrations.adk") from error

from kvsessions.documents.codec import parse_timestamp
from kvsessions.documents.models import ChatMessage, ChatSession, utc_now
from kvsessions.integrations.storage_source import StorageSource, session_storage
from kvsessions.sessions.message_documents import load_messages_as
from kvsessions.sessions.state import StateScope
from kvsessions.sessions.storage import SessionStorage

__all__ = ["EVENT_KEY", "KVSessionService", "adk_ids", "document_event", "event_message",
           "message_event", "stored_id"]

#: The metadata key of a message that holds the ADK event it was made from.
EVENT_KEY = "adk_event"
#: The model a session this service creates is stored with (what ``kvsessions ls`` shows).
DEFAULT_MODEL = "google-adk"
#: Sessions one listing page reads.
_LIST_PAGE = 500
_T = TypeVar("_T")


class KVSessionService(BaseSessionService):
    """ADK's session service on a kvsessions storage (see the module docstring).

    ``storage``: a store URL (opened here, closed by ``close()``), a ``SessionStorage`` or a
    ``KVStore`` (the caller's: ``close()`` leaves it open); ``store_options`` go to
    ``open_store`` with a URL.
    """

    def __init__(self, storage: StorageSource, *, model: str = DEFAULT_MODEL,
                 **store_options: Any) -> None:
        self._storage, self._owns_storage = session_storage(storage, **store_options)
        self._model = model

    @property
    def storage(self) -> SessionStorage:
        """The kvsessions storage this adapter reads and writes (from any event loop)."""
        return self._storage

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.storage!r})"

    async def close(self) -> None:
        """Close the storage when it was made here from a URL; else leave it to its owner."""
        if self._owns_storage:
            await self._storage.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ sessions

    async def create_session(self, *, app_name: str, user_id: str,
                             state: dict[str, Any] | None = None,
                             session_id: str | None = None) -> Session:
        """A new session (``AlreadyExistsError`` when its id is taken); ``state`` split into
        app, user and session state as an event's delta is."""
        session_id = (session_id or "").strip() or str(uuid.uuid4())
        now = utc_now()
        head = ChatSession(session_id=stored_id(app_name, user_id, session_id),
                           model=self._model, created_at=now, updated_at=now,
                           user_id=user_id, app_name=app_name)
        if not await self.storage.insert_session(head):
            raise AlreadyExistsError(f"Session with id {session_id} already exists.")
        await self._apply_delta(app_name, user_id, head.session_id, state or {})
        return await self._session(head, [])

    async def get_session(self, *, app_name: str, user_id: str, session_id: str,
                          config: GetSessionConfig | None = None) -> Session | None:
        """The session with its events (the latest ``num_recent_events``, those at or after
        ``after_timestamp``, as ``config`` says) and its merged state; None when there is no
        such session of that user and application."""
        recent = None if config is None else config.num_recent_events
        after = None if config is None else config.after_timestamp
        found = await self._owned_with_events(app_name, user_id, session_id,
                                              None if after else recent)
        if found is None:
            return None
        head, events = found
        if after:
            events = [event for event in events if event.timestamp >= after]
        events.sort(key=lambda event: event.timestamp)  # ties keep the append order
        if recent is not None:
            events = events[-recent:] if recent else []
        return await self._session(head, events)

    async def list_sessions(self, *, app_name: str,
                            user_id: str | None = None) -> ListSessionsResponse:
        """The sessions of the application (of one user when given), least recently updated
        first, with their merged state and without events."""
        heads: list[ChatSession] = []
        cursor: str | None = None
        while True:
            page, cursor = await self.storage.page_sessions(
                limit=_LIST_PAGE, before=cursor, app_name=app_name, user_id=user_id)
            heads.extend(page)
            if cursor is None:
                break
        heads.reverse()
        shared = await self._shared_states(app_name, {str(head.user_id) for head in heads})
        sessions = await asyncio.gather(*(self._session(head, [], shared) for head in heads))
        return ListSessionsResponse(sessions=list(sessions))

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Remove the session, its events and its session state (user and app state stay)."""
        head = await self._owned(app_name, user_id, session_id, 0)
        if head is not None:
            await self.storage.delete_session(head.session_id)

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        return dict((await self.storage.get_state(StateScope.user(app_name, user_id))).value)

    # ------------------------------------------------------------------ events

    async def append_event(self, session: Session, event: Event) -> Event:
        """Store the event and apply its state delta (see the module docstring), refusing a
        stale session object with ``StaleSessionError``."""
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        key = stored_id(session.app_name, session.user_id, session.id)
        expected = await self._expected_revision(session, key)
        message = event_message(key, event)
        try:
            revision = await self.storage.append_messages_at(key, [message],
                                                             expected_revision=expected)
        except RevisionConflictError as error:
            raise StaleSessionError(
                "The session has been modified in storage since it was loaded. "
                "Please reload the session before appending more events.") from error
        except StoredSessionNotFoundError as error:
            raise SessionNotFoundError(f"Session {session.id} not found.") from error
        session._storage_update_marker = str(revision)
        session.last_update_time = max(session.last_update_time, event.timestamp)
        if event.actions and event.actions.state_delta:
            await self._apply_delta(session.app_name, session.user_id, key,
                                    event.actions.state_delta)
        return self._commit_event_to_session(session, event)

    async def _expected_revision(self, session: Session, key: str) -> int:
        """The head revision ``session`` was read or written at; for a session object without
        one, the stored revision unless ADK's own rule finds the object stale."""
        marker = session._storage_update_marker
        if marker is not None and marker.isdigit():
            return int(marker)
        head = await self.storage.load_session(key, last_messages=1)
        if head is None:
            raise SessionNotFoundError(f"Session {session.id} not found.")
        if head.updated_at.timestamp() > session.last_update_time:
            latest = [message_event(message).id for message in head.messages]
            mine = [event.id for event in session.events[-1:]]
            if latest != mine:
                raise StaleSessionError(
                    "The session has been modified in storage since it was loaded. "
                    "Please reload the session before appending more events.")
        return head.revision

    # ------------------------------------------------------------------ internals

    async def _owned(self, app_name: str, user_id: str, session_id: str,
                     recent: int | None) -> ChatSession | None:
        """The stored session (its latest ``recent`` messages; all with None) when it belongs
        to that user of that application, else None. A padded id is read as stored, else
        stripped, as ADK's own services read it."""
        head = await self.storage.load_session(stored_id(app_name, user_id, session_id),
                                               last_messages=recent)
        if head is None and session_id != session_id.strip():
            head = await self.storage.load_session(
                stored_id(app_name, user_id, session_id.strip()), last_messages=recent)
        if head is None or head.app_name != app_name or head.user_id != user_id:
            return None
        return head

    async def _owned_with_events(self, app_name: str, user_id: str, session_id: str,
                                 recent: int | None
                                 ) -> tuple[ChatSession, list[Event]] | None:
        """``_owned`` with the events of its latest ``recent`` messages (all with None), the
        head and the messages read together, each event made from its document as it is read
        (``load_messages_as``: no ``ChatMessage`` is built on the way, and no document kept)."""
        key = stored_id(app_name, user_id, session_id)
        head, events = await asyncio.gather(
            self._owned(app_name, user_id, session_id, 0),
            load_messages_as(self.storage, key, document_event, limit=recent) if recent != 0
            else _given([]))
        if head is None:
            return None
        if head.session_id != key:  # found under the stripped id: read its messages
            events = await load_messages_as(self.storage, head.session_id, document_event,
                                            limit=recent) if recent != 0 else []
        return head, events

    async def _shared_states(self, app_name: str, user_ids: set[str]
                             ) -> dict[str | None, dict[str, Any]]:
        """The app state (key None) and each user's state, read once for many sessions."""
        scopes = [StateScope.app(app_name)] + [StateScope.user(app_name, user_id)
                                               for user_id in sorted(user_ids)]
        states = await asyncio.gather(*(self.storage.get_state(scope) for scope in scopes))
        return {scope.user_id: state.value for scope, state in zip(scopes, states, strict=True)}

    async def _session(self, head: ChatSession, events: list[Event],
                       shared: dict[str | None, dict[str, Any]] | None = None) -> Session:
        app_name, user_id, session_id = adk_ids(head.session_id)
        own, shared = await asyncio.gather(
            self.storage.get_state(StateScope.session(head.session_id)),
            self._shared_states(app_name, {user_id}) if shared is None else _given(shared))
        state = dict(own.value)
        state.update((AdkState.USER_PREFIX + key, value)
                     for key, value in shared.get(user_id, {}).items())
        state.update((AdkState.APP_PREFIX + key, value) for key, value in shared[None].items())
        session = Session(id=session_id, app_name=app_name, user_id=user_id, state=state,
                          events=events, last_update_time=head.updated_at.timestamp())
        session._storage_update_marker = str(head.revision)
        return session

    async def _apply_delta(self, app_name: str, user_id: str, session_id: str,
                           delta: Mapping[str, Any]) -> None:
        """Merge a state delta into the app, user and session state documents (``temp:``
        keys dropped), each document atomically, the three concurrently."""
        app, user, own = split_state(delta)
        writes = []
        if app:
            writes.append(self._merge(StateScope.app(app_name), app))
        if user:
            writes.append(self._merge(StateScope.user(app_name, user_id), user))
        if own:
            writes.append(self._merge(StateScope.session(session_id), own))
        await asyncio.gather(*writes)

    async def _merge(self, scope: StateScope, delta: dict[str, Any]) -> None:
        """Merge ``delta`` into one state document as ADK merges (a value None is stored as
        null, not removed as ``update_state`` would): a compare-and-set of the document read,
        repeated from a fresh read when another writer got in first."""
        while True:
            current = await self.storage.get_state(scope)
            try:
                await self.storage.set_state(scope, {**current.value, **delta},
                                             expected_revision=current.revision)
                return
            except RevisionConflictError:
                continue


async def _given(value: _T) -> _T:
    return value


# ---------------------------------------------------------------------- ids, state, events

def stored_id(app_name: str, user_id: str, session_id: str) -> str:
    """The kvsessions session id of an ADK session (see the module docstring): one id for
    each (app, user, session), and no two alike."""
    return ":".join(_escape(part) for part in (app_name, user_id, session_id))


def adk_ids(stored: str) -> tuple[str, str, str]:
    """(app_name, user_id, session_id) of a kvsessions session id made by ``stored_id``."""
    app_name, user_id, session_id = (_unescape(part) for part in stored.split(":"))
    return app_name, user_id, session_id


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


def _unescape(part: str) -> str:
    return part.replace("%3A", ":").replace("%25", "%")


def split_state(delta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                   dict[str, Any]]:
    """(app, user, session) parts of a state delta, prefixes removed, ``temp:`` keys dropped,
    values made JSON (what cannot be JSON becomes its ``str``, as ADK's SQL services do)."""
    app: dict[str, Any] = {}
    user: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in delta.items():
        if key.startswith(AdkState.TEMP_PREFIX):
            continue
        if key.startswith(AdkState.APP_PREFIX):
            app[key.removeprefix(AdkState.APP_PREFIX)] = value
        elif key.startswith(AdkState.USER_PREFIX):
            user[key.removeprefix(AdkState.USER_PREFIX)] = value
        else:
            own[key] = value
    return _json(app), _json(user), _json(own)


def _json(values: dict[str, Any]) -> dict[str, Any]:
    if not values:
        return values
    parsed: dict[str, Any] = orjson.loads(orjson.dumps(
        values, default=str, option=orjson.OPT_NON_STR_KEYS))
    return parsed


def event_message(session_id: str, event: Event) -> ChatMessage:
    """The message an event is stored as (see the module docstring)."""
    document = orjson.loads(event.model_dump_json(exclude_none=True))
    message = ChatMessage.create(session_id, _role(event), _text(event.content),
                                 {EVENT_KEY: document})
    message.created_at = datetime.fromtimestamp(event.timestamp, UTC)
    return message


def message_event(message: ChatMessage) -> Event:
    """The event a stored message holds, or one made of its role, text and time."""
    stored = message.metadata.get(EVENT_KEY)
    if type(stored) is dict:
        return Event.model_validate_json(orjson.dumps(stored))
    return _plain_event(message.message_id, message.role, message.content,
                        message.created_at.timestamp())


def document_event(document: dict[str, Any]) -> Event:
    """``message_event`` of a message document (``load_messages_as``)."""
    stored = document["metadata"].get(EVENT_KEY)
    if type(stored) is dict:
        return Event.model_validate_json(orjson.dumps(stored))
    moment = parse_timestamp(document["created_at"], path="created_at")
    return _plain_event(document["message_id"], document["role"], document["content"],
                        moment.timestamp())


def _plain_event(message_id: str, role: str, content: str, timestamp: float) -> Event:
    """The event of a message stored without one (written by other kvsessions code)."""
    return Event(id=message_id, invocation_id="", author=role, timestamp=timestamp,
                 content=types.Content(role="user" if role == "user" else "model",
                                       parts=[types.Part(text=content)]))


def _role(event: Event) -> str:
    if event.author == "user":
        return "user"
    if event.get_function_responses():
        return "tool"
    return "assistant"


def _text(content: types.Content | None) -> str:
    if content is None or not content.parts:
        return ""
    texts: list[str] = []
    for part in content.parts:
        if part.text:
            texts.append(part.text)
        elif part.function_call is not None:
            arguments = orjson.dumps(part.function_call.args or {}, default=str).decode()
            texts.append(f"{part.function_call.name}({arguments})")
        elif part.function_response is not None:
            texts.append(orjson.dumps(part.function_response.response or {},
                                      default=str).decode())
    return "\n".join(texts)
