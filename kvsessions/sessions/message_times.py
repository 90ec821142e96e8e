"""Time bounds on a session's messages as key bounds: message ids are UUIDv7, whose text starts
with the creation time in milliseconds (12 hex digits, ``xxxxxxxx-xxxx-``), so the messages of
a time window lie in one key range of ``message:{sid}:`` and are read without the rest.

An id's time and a message's ``created_at`` are taken a moment apart by
``ChatMessage.create``, and a caller may set ``created_at`` to anything, so a window reads the
key range widened by ``ID_TIME_SLACK`` on each side and then keeps the messages whose
``created_at`` is in the window. A message is therefore found when its ``created_at`` is in
the window and its id's time within ``ID_TIME_SLACK`` of the window: every message made by
``ChatMessage.create``; not one whose ``created_at`` was set far from its id's time, nor one
whose id is not a UUIDv7 (ids that are not hexadecimal time sort after all UUIDv7 ids).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from kvsessions.documents.keys import message_prefix
from kvsessions.documents.models import ChatMessage
from kvsessions.errors import InvalidValueError

__all__ = ["ID_TIME_SLACK", "TimeWindow"]

#: How far an id's time may lie outside a window and its message still be found.
ID_TIME_SLACK = timedelta(seconds=1)
_MAX_MS = (1 << 48) - 1


def _id_time_text(milliseconds: int) -> str:
    """The start of every UUIDv7 text of that millisecond (``xxxxxxxx-xxxx``)."""
    digits = f"{min(max(milliseconds, 0), _MAX_MS):012x}"
    return f"{digits[:8]}-{digits[8:]}"


def _milliseconds(moment: datetime, shift: timedelta, overflow: int) -> int:
    """Unix milliseconds of ``moment + shift`` (``overflow`` past the ends of datetime)."""
    try:
        return int((moment + shift).timestamp() * 1000)
    except OverflowError:
        return overflow


def _check(moment: object, name: str) -> datetime | None:
    if moment is None:
        return None
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise InvalidValueError(f"{name} must be a timezone-aware datetime or None, "
                                f"not {moment!r:.60}")
    return moment


class TimeWindow:
    """``since`` (inclusive) to ``until`` (exclusive) on ``created_at``, either open."""

    def __init__(self, since: object, until: object) -> None:
        self.since = _check(since, "since")
        self.until = _check(until, "until")

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None

    def lower_key(self, session_id: str) -> str | None:
        """A key below every message key of the window (an exclusive lower bound)."""
        if self.since is None:
            return None
        start = _milliseconds(self.since, -ID_TIME_SLACK, 0)
        return message_prefix(session_id) + _id_time_text(start)

    def upper_key(self, session_id: str) -> str | None:
        """A key above every message key of the window (an exclusive upper bound)."""
        if self.until is None:
            return None
        end = _milliseconds(self.until, ID_TIME_SLACK, _MAX_MS) + 1
        return message_prefix(session_id) + _id_time_text(end)

    def keep(self) -> Callable[[ChatMessage], bool] | None:
        """The filter on ``created_at`` (None: no bound)."""
        since, until = self.since, self.until
        if since is None and until is None:
            return None
        return lambda message: ((since is None or message.created_at >= since)
                                and (until is None or message.created_at < until))
