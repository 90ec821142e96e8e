"""``update_session``: change a session's head (metadata merged key by key, status, model)
without loading its messages, atomically under concurrent writers.

The change is applied to the head just read and written with ``compare_and_set``; when another
writer got in first the change is applied again to the fresh head, so two writers setting
different metadata keys both keep theirs (no lost update). The index entries follow the rules
of ``kvsessions.sessions.index`` (a status change moves the session between status indexes;
``updated_at`` becomes now, unless the head is already later). The owner is fixed at creation
and not changed here. ``expected_revision`` makes the update conditional on the head's
revision (``RevisionConflictError``, nothing written, otherwise).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kvsessions.documents.codec import format_timestamp, parse_timestamp
from kvsessions.documents.keys import session_key
from kvsessions.documents.models import utc_now
from kvsessions.errors import InvalidValueError, SessionNotFoundError
from kvsessions.sessions.arguments import check_status
from kvsessions.sessions.heads import (
    DELETING,
    Head,
    check_expected_revision,
    check_revision,
    next_revision,
)
from kvsessions.sessions.index import SessionIndex
from kvsessions.sessions.state import merge_delta
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["HeadChange", "update_head"]

ReadHead = Callable[[str], Awaitable[Head | None]]


class HeadChange:
    """The change asked for, checked before anything is read."""

    def __init__(self, metadata: Mapping[str, Any] | None, status: str | None,
                 model: str | None) -> None:
        if metadata is not None and (not isinstance(metadata, Mapping)
                                     or not all(type(name) is str for name in metadata)):
            raise InvalidValueError(f"metadata must be a mapping with string keys, not "
                                    f"{type(metadata).__name__}")
        check_status(status)
        if model is not None and type(model) is not str:
            raise InvalidValueError(f"model must be a string, not {type(model).__name__}")
        self.metadata = None if metadata is None else dict(metadata)
        self.status = status
        self.model = model

    def applied(self, current: dict[str, Any]) -> dict[str, Any]:
        """The head with the change applied (``updated_at`` and revision not yet moved)."""
        document = dict(current)
        if self.metadata is not None:
            document["metadata"] = merge_delta(current["metadata"], self.metadata)
        if self.status is not None:
            document["status"] = self.status
        if self.model is not None:
            document["model"] = self.model
        return document


async def update_head(documents: ValidatingStore, index: SessionIndex, read_head: ReadHead,
                      session_id: str, change: HeadChange,
                      expected_revision: int | None) -> dict[str, Any]:
    """Apply ``change`` to the head of ``session_id`` (see the module docstring); the head
    as written (or as stored, when the change changes nothing)."""
    check_expected_revision(expected_revision)
    key = session_key(session_id)
    while True:
        head = await read_head(session_id)
        if head is None or head[1]["status"] == DELETING:
            raise SessionNotFoundError(f"no session {session_id!r}")
        current = head[1]
        check_revision(f"session {session_id!r}", expected_revision, current)
        document = change.applied(current)
        if document == current:
            return current
        now = utc_now()
        if now > parse_timestamp(current["updated_at"], key=key, path="updated_at"):
            document["updated_at"] = format_timestamp(now)
        next_revision(document, current)
        encoded = documents.encode(key, document)  # raises, naming the field, if invalid
        if await index.change(session_id, head, document, encoded):
            return document
