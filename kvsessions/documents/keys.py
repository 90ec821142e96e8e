"""The key layout: which key holds which document. Every key is built and read here.

::

    session:{sid}          the head of session sid
    message:{sid}:{mid}    one message; message ids are time-ordered, so key order is
                           conversation order and "the latest N" is one short reverse scan
    file:{fid}             an uploaded-file record
    index:sessions:{t}:{sid}          every session, by updated_at ``t`` (see below)
    index:status:{status}:{t}:{sid}   the sessions of one status, by updated_at
    index:file-expiry:{t}:{fid}       file records, by expires_at
    index:owner:{app}:{user}:{t}:{sid}  the sessions of one user of one application
    index:app:{app}:{t}:{sid}           the sessions of one application (any user)
    index:user:{user}:{t}:{sid}         the sessions of one user (any application)
    index:state                       whether the index entries are complete
    session-state:{sid}    the state document of session sid (deleted with the session)
    state:user:{app}:{user}  the state of one user of one application
    state:app:{app}        the state of one application

A session has owner entries only for the parts of its owner it has (``user_id``,
``app_name``); the owner never changes after creation, so they move only with ``updated_at``.

Index entries are ordinary keys holding a tiny ``index`` document; their key is what matters.
``{t}`` is a fixed-width UTC timestamp (``index_timestamp``), so key order is time order and
"the newest sessions" is one short reverse scan, "what has expired" one short forward scan.
How entries stay right under concurrent writers is ``kvsessions.sessions.index``'s business.

Partitions (``kvsessions.kv.partitions``): a key's partition is the text between its first and
second ``:``. Every per-session key built here puts the session id there (``session:``,
``message:``, ``session-state:``), so a session's head, messages and state share a partition;
a file record's is its id; each index is one partition (``index:sessions:``, ``index:owner:``
...), and so are the user states (``state:user:``) and the application states
(``state:app:``). Stores that shard keep a partition together (a Redis Cluster slot, a MongoDB
shard, a PostgreSQL hash partition). A new per-session kind keeps the shape
``kind:{encoded sid}`` or ``kind:{encoded sid}:...``; nothing else is needed from callers.

Each id is encoded before it goes into a key: ``%`` becomes ``%25``, ``:`` becomes ``%3A``
and NUL (which no key may hold) ``%00``. An encoded id holds no ``:``, so in a message key the
first ``:`` after ``message:`` ends the session part: the map from (kind, ids) to key is
injective for every id the schemas accept, and no session's message prefix is a prefix of
another session's keys (sessions ``team`` and ``team:42`` own ``message:team:`` and
``message:team%3A42:``). An id without those characters is its own encoding, so its keys are
exactly those of earlier releases.

Earlier releases put ids into keys as they were. Their documents whose ids hold ``:`` or ``%``
sit under *legacy keys*, which ``upgrade_key_layout`` moves to the keys above (``kvsessions
upgrade`` runs it); until then ``SessionStorage`` raises an error naming that command for
such a session instead of reading it as missing (``legacy_key_error``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from kvsessions.errors import StoreError
from kvsessions.kv.base import KVStore

__all__ = [
    "APP_INDEX_PREFIX",
    "FILE_EXPIRY_PREFIX",
    "FILE_PREFIX",
    "INDEX_PREFIX",
    "INDEX_STATE_KEY",
    "MESSAGE_PREFIX",
    "OWNER_INDEX_PREFIX",
    "SESSION_INDEX_PREFIX",
    "SESSION_PREFIX",
    "SESSION_STATE_PREFIX",
    "STATE_PREFIX",
    "STATUS_INDEX_PREFIX",
    "USER_INDEX_PREFIX",
    "app_state_key",
    "decode_id",
    "encode_id",
    "file_expiry_key",
    "file_key",
    "index_entry_parts",
    "index_timestamp",
    "key_of_document",
    "kind_of_key",
    "legacy_key_error",
    "legacy_key_of_document",
    "message_key",
    "message_prefix",
    "owner_index_keys",
    "owner_index_prefix",
    "session_entries",
    "session_index_keys",
    "session_index_prefix",
    "session_key",
    "session_state_key",
    "upgrade_key_layout",
    "user_state_key",
]

SESSION_PREFIX = "session:"
MESSAGE_PREFIX = "message:"
FILE_PREFIX = "file:"
INDEX_PREFIX = "index:"
SESSION_INDEX_PREFIX = "index:sessions:"
STATUS_INDEX_PREFIX = "index:status:"
FILE_EXPIRY_PREFIX = "index:file-expiry:"
INDEX_STATE_KEY = "index:state"
OWNER_INDEX_PREFIX = "index:owner:"
APP_INDEX_PREFIX = "index:app:"
USER_INDEX_PREFIX = "index:user:"
STATE_PREFIX = "state:"
#: Per-session state sits in its session's partition, so not under ``state:``.
SESSION_STATE_PREFIX = "session-state:"

_KIND_OF_PREFIX = {SESSION_PREFIX: "session", MESSAGE_PREFIX: "message", FILE_PREFIX: "file",
                   INDEX_PREFIX: "index", STATE_PREFIX: "state", SESSION_STATE_PREFIX: "state"}
#: Length of ``index_timestamp``'s text: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
_TIMESTAMP_WIDTH = 27
_DECODED = {"%25": "%", "%3A": ":", "%00": "\x00"}
_ENCODED = re.compile("%25|%3A|%00")
#: Documents a legacy-key upgrade moves per batch.
_UPGRADE_BATCH = 500


def encode_id(identifier: str) -> str:
    """``identifier`` as it appears in a key (see the module docstring)."""
    if "%" in identifier or ":" in identifier or "\x00" in identifier:
        return (identifier.replace("%", "%25").replace(":", "%3A")
                .replace("\x00", "%00"))
    return identifier


def decode_id(part: str) -> str:
    """The id an encoded key part stands for (the inverse of ``encode_id``)."""
    if "%" not in part:
        return part
    return _ENCODED.sub(lambda match: _DECODED[match[0]], part)


def session_key(session_id: str) -> str:
    return SESSION_PREFIX + encode_id(session_id)


def message_prefix(session_id: str) -> str:
    """The prefix of exactly the keys of ``session_id``'s messages."""
    return f"{MESSAGE_PREFIX}{encode_id(session_id)}:"


def message_key(session_id: str, message_id: str) -> str:
    return f"{MESSAGE_PREFIX}{encode_id(session_id)}:{encode_id(message_id)}"


def file_key(file_id: str) -> str:
    return FILE_PREFIX + encode_id(file_id)


def index_timestamp(moment: datetime) -> str:
    """``moment`` in UTC as fixed-width text (always microseconds), so that text order is time
    order (``format_timestamp`` leaves out zero microseconds, which would not sort)."""
    utc = moment.astimezone(UTC)
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
            f"{utc.second:02d}.{utc.microsecond:06d}Z")


def session_index_prefix(status: str | None) -> str:
    """The prefix of the updated-at entries of sessions with ``status`` (None: all)."""
    return SESSION_INDEX_PREFIX if status is None else f"{STATUS_INDEX_PREFIX}{status}:"


def session_index_keys(session_id: str, status: str, updated_at: datetime) -> tuple[str, str]:
    """The entries naming a head of ``status`` updated at ``updated_at``: in the index of all
    sessions and in the index of its status."""
    every, of_status = session_entries(session_id, status, None, None,
                                       index_timestamp(updated_at))
    return every, of_status


def session_entries(session_id: str, status: str, user_id: str | None, app_name: str | None,
                    stamp: str) -> tuple[str, ...]:
    """Every entry naming a head (``session_index_keys`` and ``owner_index_keys``) whose
    ``updated_at`` is ``stamp``, already ``index_timestamp`` text: a head's entries are built
    twice per change, and the text of a stored head needs no parse and format."""
    tail = f"{stamp}:{encode_id(session_id)}"
    entries = [SESSION_INDEX_PREFIX + tail, session_index_prefix(status) + tail]
    if user_id is not None:
        entries.append(owner_index_prefix(user_id, None) + tail)
    if app_name is not None:
        entries.append(owner_index_prefix(None, app_name) + tail)
    if user_id is not None and app_name is not None:
        entries.append(owner_index_prefix(user_id, app_name) + tail)
    return tuple(entries)


def owner_index_prefix(user_id: str | None, app_name: str | None) -> str:
    """The prefix of the updated-at entries of the sessions owned by ``user_id`` in
    ``app_name`` (either may be None: any; not both)."""
    if app_name is not None and user_id is not None:
        return f"{OWNER_INDEX_PREFIX}{encode_id(app_name)}:{encode_id(user_id)}:"
    if app_name is not None:
        return f"{APP_INDEX_PREFIX}{encode_id(app_name)}:"
    if user_id is not None:
        return f"{USER_INDEX_PREFIX}{encode_id(user_id)}:"
    raise ValueError("an owner index needs a user_id, an app_name or both")


def owner_index_keys(session_id: str, user_id: str | None, app_name: str | None,
                     updated_at: datetime) -> tuple[str, ...]:
    """The owner entries naming a head owned by ``user_id`` in ``app_name``, updated at
    ``updated_at``: by application, by user, and by both (only those its owner has)."""
    return session_entries(session_id, "", user_id, app_name, index_timestamp(updated_at))[2:]


def session_state_key(session_id: str) -> str:
    """The state document of ``session_id`` (``delete_session`` removes it)."""
    return SESSION_STATE_PREFIX + encode_id(session_id)


def user_state_key(app_name: str, user_id: str) -> str:
    return f"{STATE_PREFIX}user:{encode_id(app_name)}:{encode_id(user_id)}"


def app_state_key(app_name: str) -> str:
    return f"{STATE_PREFIX}app:{encode_id(app_name)}"


def file_expiry_key(file_id: str, expires_at: datetime) -> str:
    return f"{FILE_EXPIRY_PREFIX}{index_timestamp(expires_at)}:{encode_id(file_id)}"


def index_entry_parts(key: str, prefix: str) -> tuple[str, str] | None:
    """(timestamp text, id) of the entry ``key`` under ``prefix``; None when ``key`` is not
    one (a stray key is skipped, never misread)."""
    tail = key[len(prefix):]
    if (not key.startswith(prefix) or len(tail) <= _TIMESTAMP_WIDTH + 1
            or tail[_TIMESTAMP_WIDTH] != ":"):
        return None
    part = tail[_TIMESTAMP_WIDTH + 1:]
    if ":" in part:
        return None
    return tail[:_TIMESTAMP_WIDTH], decode_id(part)


def kind_of_key(key: str) -> str | None:
    """The kind of document the layout keeps under ``key`` (None: not a layout key)."""
    prefix, colon, _ = key.partition(":")
    return _KIND_OF_PREFIX.get(prefix + colon)


def _ids(document: Any) -> tuple[str, ...] | None:
    """The ids that place ``document`` in the layout, or None for anything else."""
    if type(document) is not dict:
        return None
    names = {"session": ("session_id",), "message": ("session_id", "message_id"),
             "file": ("file_id",)}.get(document.get("kind"))  # type: ignore[arg-type]
    if names is None:
        return None
    ids = tuple(document.get(name) for name in names)
    if not all(type(part) is str and part for part in ids):
        return None
    return ids  # type: ignore[return-value]


def key_of_document(document: Any) -> str | None:
    """The key ``document`` belongs under, from its kind and ids (None: not a layout kind)."""
    ids = _ids(document)
    if ids is None:
        return None
    if len(ids) == 2:
        return message_key(*ids)
    return (session_key if document["kind"] == "session" else file_key)(ids[0])


def legacy_key_of_document(document: Any) -> str | None:
    """The key an earlier release wrote ``document`` under (ids unencoded)."""
    ids = _ids(document)
    if ids is None:
        return None
    prefix = {"session": SESSION_PREFIX, "message": MESSAGE_PREFIX, "file": FILE_PREFIX}
    return prefix[document["kind"]] + ":".join(ids)


def legacy_key_error(what: str) -> StoreError:
    """The error for a document found only under its legacy key."""
    return StoreError(f"{what} is stored under the key layout of an earlier release (its id "
                      "holds ':' or '%'); move it once with `kvsessions upgrade URL` "
                      "(kvsessions.documents.keys.upgrade_key_layout)")


async def upgrade_key_layout(store: KVStore) -> int:
    """Move every document under a legacy key to its key; the number moved. Messages go
    before heads, so a session appears under its new key with its messages already there.
    A document already under its new key wins over its legacy copy (it was written later).
    Safe to interrupt and run again; documents under keys this layout does not know, or
    whose ids do not name the key they are under, are left alone."""
    moved = 0
    for prefix in (MESSAGE_PREFIX, FILE_PREFIX, SESSION_PREFIX):
        pending: list[tuple[str, str, bytes]] = []
        async for key, value in store.scan(prefix):
            try:
                document = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            target = key_of_document(document)
            if target is None or target == key or legacy_key_of_document(document) != key:
                continue
            pending.append((key, target, value))
            if len(pending) >= _UPGRADE_BATCH:
                moved += await _move(store, pending)
                pending = []
        moved += await _move(store, pending)
    return moved


async def _move(store: KVStore, moves: list[tuple[str, str, bytes]]) -> int:
    for legacy, target, value in moves:
        await store.put_if_absent(target, value)
        await store.delete(legacy)
    return len(moves)
