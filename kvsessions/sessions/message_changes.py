"""What ``save_session`` writes of ``session.messages``: the messages new to this storage, the
ones edited since this storage loaded or saved them, and the ones removed from the list.

A storage remembers a *fingerprint* of every message it loaded or saved from a session object
(``SavedState.messages``): its role, content, ``created_at`` and metadata as JSON. Strings
are immutable, so an unchanged role or content is the same object and compares at once; only
the metadata is encoded again. Planning a save is thus O(messages in memory), cheap per
message, and the save writes O(changes). A message this storage never saw (one another writer
stored, or one a partial load left out) is never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from kvsessions.documents.keys import message_key
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import ValidationError

__all__ = ["Fingerprint", "SavePlan", "fingerprint", "plan_save", "remember"]

#: role, content, created_at and metadata (JSON; None when it is not JSON: never equal).
Fingerprint = tuple[Any, Any, datetime, bytes | None]

_dumps = orjson.dumps
_EMPTY = b"{}"


def fingerprint(message: ChatMessage) -> Fingerprint:
    metadata: bytes | None = _EMPTY
    if message.metadata or type(message.metadata) is not dict:  # {} is common: no encoding
        try:
            metadata = _dumps(message.metadata)
        except TypeError:  # orjson.JSONEncodeError: the save's validation names the field
            metadata = None
    return (message.role, message.content, message.created_at, metadata)


def remember(known: dict[str, Fingerprint], messages: list[ChatMessage]) -> None:
    """Note ``messages`` as stored as they are now."""
    for message in messages:
        known[message.message_id] = fingerprint(message)


@dataclass
class SavePlan:
    """The messages one save writes: ``new`` (``put_if_absent``), ``edited`` (rewritten
    unless another writer deleted them meanwhile) and the ids of ``removed`` ones; their
    fingerprints once stored."""

    new: list[ChatMessage] = field(default_factory=list)
    edited: list[ChatMessage] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    prints: dict[str, Fingerprint] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.new or self.edited or self.removed)

    @property
    def changes_stored(self) -> bool:
        """Whether messages already stored change (which moves the head's ``updated_at``)."""
        return bool(self.edited or self.removed)

    def settle(self, known: dict[str, Fingerprint]) -> None:
        """After the save: what is stored now."""
        for message_id in self.removed:
            known.pop(message_id, None)
        known.update(self.prints)


def plan_save(session: ChatSession, known: dict[str, Fingerprint]) -> SavePlan:
    """The plan of saving ``session`` over what this storage knows is stored; a
    ``ValidationError`` when two messages share an id (one key cannot hold both)."""
    plan = SavePlan()
    seen: set[str] = set()
    for message in session.messages:
        message_id = message.message_id
        if message_id in seen:
            raise ValidationError(
                f"two messages of session {session.session_id!r} have the id "
                f"{message_id!r}", key=message_key(session.session_id, str(message_id)),
                path="message_id", kind="message")
        seen.add(message_id)
        stored = known.get(message_id)
        current = fingerprint(message)
        if stored is None:
            plan.new.append(message)
        elif stored == current:
            continue
        else:
            plan.edited.append(message)
        plan.prints[message_id] = current
    if len(known) + len(plan.new) != len(seen):
        plan.removed = [message_id for message_id in known if message_id not in seen]
    return plan
