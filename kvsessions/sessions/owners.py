"""Owners of sessions: an optional ``user_id`` and ``app_name`` set when a session is created
(schema version 2) and never changed after, and the filter listings apply.

Listing "the sessions of this user (of this application)" reads the owner index entries
(``index:owner:``, ``index:app:``, ``index:user:`` in ``kvsessions.documents.keys``), written
and removed by the same rules as every other session entry (``kvsessions.sessions.index``):
O(result), whatever the store holds. A status given with an owner is checked on the heads read
(no index per owner and status): O(the owner's sessions newer than the page) at worst.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvsessions.documents.keys import owner_index_prefix
from kvsessions.sessions.state import check_owner_id

__all__ = ["OwnerFilter", "owner_filter"]


@dataclass(frozen=True)
class OwnerFilter:
    """Sessions of ``user_id`` and/or ``app_name`` (at least one is set)."""

    user_id: str | None
    app_name: str | None

    @property
    def prefix(self) -> str:
        """The prefix of the owner entries that list exactly these sessions."""
        return owner_index_prefix(self.user_id, self.app_name)

    def matches(self, head: dict[str, Any]) -> bool:
        return ((self.user_id is None or head.get("user_id") == self.user_id)
                and (self.app_name is None or head.get("app_name") == self.app_name))


def owner_filter(user_id: object, app_name: object) -> OwnerFilter | None:
    """The filter for a listing's ``user_id``/``app_name`` arguments (None: no filter), each
    checked (``InvalidValueError`` for an empty or non-string one)."""
    if user_id is None and app_name is None:
        return None
    return OwnerFilter(None if user_id is None else check_owner_id(user_id, "user_id"),
                       None if app_name is None else check_owner_id(app_name, "app_name"))
