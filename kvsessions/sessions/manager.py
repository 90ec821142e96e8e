"""``SessionManager``: the session lifecycle on top of a ``SessionStorage``.

It keeps the sessions it handles in memory (up to ``max_cached_sessions``, least recently used
dropped first), saves them incrementally (``auto_save`` writes only the new messages and the
head), expires sessions not updated for ``expiry_hours``, archives, exports and counts.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from typing import Any

from kvsessions.atomic_file import write_file_atomically
from kvsessions.documents.models import ChatSession, utc_now
from kvsessions.errors import ConfigError
from kvsessions.kv.base import KVStore
from kvsessions.sessions.exports import EXPORT_FORMATS, UnsupportedFormatError, render_session
from kvsessions.sessions.storage import SessionStorage

__all__ = ["EXPIRY_HOURS_RULE", "MAX_EXPIRY_HOURS", "SessionManager", "check_expiry_hours"]

#: Expired sessions one cleanup step reads and marks.
_CLEANUP_PAGE = 500
#: The longest expiry, about 114 years: ``now - expiry`` must stay a datetime (after year 1)
#: for any clock from year 115 on, where 1e8 hours (11,000 years) raised OverflowError in
#: ``startup()``, long after the value had been accepted.
MAX_EXPIRY_HOURS = 1_000_000
#: What an expiry must be, in the words every entry point (API, config, CLI) uses.
EXPIRY_HOURS_RULE = f"a number of hours > 0 and at most {MAX_EXPIRY_HOURS:,}"


def check_expiry_hours(value: object, *, what: str = "expiry_hours") -> float:
    """``value`` if it is an expiry every time computation can hold, else ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 < value <= MAX_EXPIRY_HOURS:
        raise ConfigError(f"{what} must be {EXPIRY_HOURS_RULE}, not {value!r}")
    return value


class SessionManager:
    """The seed's session manager: ``startup``, ``create_session``, ``get_session``,
    ``auto_save``, ``archive_session``, ``cleanup_expired_sessions``, ``export_session``,
    ``export_to_file``, ``get_statistics`` and ``shutdown``."""

    def __init__(
        self,
        storage: SessionStorage,
        auto_save_enabled: bool = True,
        expiry_hours: float = 72,
        *,
        max_cached_sessions: int = 1000,
    ) -> None:
        check_expiry_hours(expiry_hours)
        if isinstance(max_cached_sessions, bool) or not isinstance(max_cached_sessions, int) \
                or max_cached_sessions < 1:
            raise ConfigError(f"max_cached_sessions must be a whole number >= 1, "
                              f"not {max_cached_sessions!r}")
        self.storage = storage
        self.auto_save_enabled = bool(auto_save_enabled)
        self.expiry_hours = expiry_hours
        self.max_cached_sessions = max_cached_sessions
        self._cache: OrderedDict[str, ChatSession] = OrderedDict()

    def __repr__(self) -> str:
        return (f"SessionManager({self.storage!r}, auto_save_enabled={self.auto_save_enabled}, "
                f"expiry_hours={self.expiry_hours})")

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> dict[str, Any]:
        """Expire stale sessions, then load the most recently updated active ones (up to
        ``max_cached_sessions``) into memory. Returns what it did."""
        started = time.perf_counter()
        await self.storage.initialize()
        expired = await self.cleanup_expired_sessions()
        heads = await self.storage.list_sessions(status="active", limit=self.max_cached_sessions)
        messages = 0
        for head in reversed(heads):  # oldest first, so the newest end up most recently used
            session = await self.storage.load_session(head.session_id)
            if session is not None:
                await self._remember(session)
                messages += len(session.messages)
        return {
            "active_sessions": len(heads),
            "loaded_sessions": len(self._cache),
            "messages_loaded": messages,
            "expired_sessions": expired,
            "duration_seconds": time.perf_counter() - started,
        }

    async def shutdown(self) -> None:
        """Save the sessions in memory that changed since they were loaded or saved (only
        what is new in each), then forget them: an unchanged session is not written, so one
        deleted elsewhere meanwhile stays deleted. The storage stays open: whoever made it
        closes it."""
        for session in list(self._cache.values()):
            if self.storage.has_changes(session):
                await self.storage.save_session(session)
        self._cache.clear()

    # ------------------------------------------------------------------ sessions

    async def create_session(self, model: str, *, user_id: str | None = None,
                             app_name: str | None = None,
                             metadata: dict[str, Any] | None = None) -> ChatSession:
        """A new active session (owned by ``user_id`` of ``app_name`` when given), stored at
        once when auto-save is on."""
        session = ChatSession.create(model, metadata, user_id=user_id, app_name=app_name)
        if self.auto_save_enabled:
            await self.storage.save_session(session)
        await self._remember(session)
        return session

    async def get_session(self, session_id: str) -> ChatSession | None:
        """The session from memory, else from the store (then kept in memory); None if none."""
        session = self._cache.get(session_id)
        if session is not None:
            self._cache.move_to_end(session_id)
            return session
        session = await self.storage.load_session(session_id)
        if session is not None:
            await self._remember(session)
        return session

    async def auto_save(self, session: ChatSession) -> bool:
        """Save what changed in ``session`` (its new messages and its head): the cheap path to
        call after every message. False (and nothing written) when auto-save is off."""
        await self._remember(session)
        if not self.auto_save_enabled:
            return False
        return await self.storage.save_session(session)

    async def archive_session(self, session_id: str) -> bool:
        """Mark the session archived (it stays stored); False if there is no such session
        (also when it was deleted elsewhere after this manager loaded it)."""
        session = await self.get_session(session_id)
        if session is None:
            return False
        session.status = "archived"
        session.updated_at = max(session.updated_at, utc_now())
        if await self.storage.save_session(session):
            return True
        self._cache.pop(session_id, None)
        return False

    async def cleanup_expired_sessions(self) -> int:
        """Mark active sessions not updated for ``expiry_hours`` as expired (they stay stored,
        their ``updated_at`` unchanged) and drop them from memory. Returns how many. Pages
        through the index of active sessions below the cutoff: it reads the expired sessions,
        not the store."""
        cutoff = utc_now() - timedelta(hours=self.expiry_hours)
        expired = 0
        cursor: str | None = None
        while True:
            heads, cursor = await self.storage.page_sessions(
                "active", _CLEANUP_PAGE, cursor, updated_before=cutoff)
            for head in heads:
                cached = self._cache.get(head.session_id)
                if cached is not None and cached.updated_at >= cutoff:
                    continue  # updated in memory since it was stored: not stale
                self._cache.pop(head.session_id, None)
                session = cached or head
                session.status = "expired"
                await self.storage.save_session(session)
                expired += 1
            if cursor is None:
                return expired

    # ------------------------------------------------------------------ export

    async def export_session(self, session_id: str, format: str = "json") -> str | None:
        """The conversation as "json", "text" or "markdown"; None if there is no session."""
        if format not in EXPORT_FORMATS:
            raise UnsupportedFormatError(
                f"unknown export format {format!r}; one of {', '.join(EXPORT_FORMATS)}")
        session = await self.get_session(session_id)
        return None if session is None else render_session(session, format)

    async def export_to_file(
        self, session_id: str, output_path: Path | str, format: str = "json"
    ) -> bool:
        """Write the export to ``output_path`` (UTF-8, folders created); False if there is no
        such session. The file is written on a worker thread, never on the event loop, and
        atomically (``kvsessions.atomic_file``): it never writes through a planted symlink."""
        text = await self.export_session(session_id, format)
        if text is None:
            return False
        await asyncio.to_thread(write_file_atomically, Path(output_path), text.encode("utf-8"),
                                create_folders=True)
        return True

    # ------------------------------------------------------------------ statistics

    async def get_statistics(self) -> dict[str, Any]:
        """Sessions by status, messages (the heads' counts), files, what is in memory and,
        when the store has a cache tier, its hit and miss counts."""
        stats = await self.storage.statistics()
        stats["cached_sessions"] = len(self._cache)
        stats["auto_save_enabled"] = self.auto_save_enabled
        stats["expiry_hours"] = self.expiry_hours
        cache = _cache_statistics(self.storage.store)
        if cache is not None:
            stats["cache"] = cache
        return stats

    # ------------------------------------------------------------------ internals

    async def _remember(self, session: ChatSession) -> None:
        """Keep ``session`` in memory; a session pushed out is saved first, so that changes
        made without auto-save are not lost."""
        self._cache[session.session_id] = session
        self._cache.move_to_end(session.session_id)
        while len(self._cache) > self.max_cached_sessions:
            _, evicted = self._cache.popitem(last=False)
            if self.storage.has_changes(evicted):
                await self.storage.save_session(evicted)


def _cache_statistics(store: KVStore) -> dict[str, Any] | None:
    """``statistics()`` of the first ``CachedStore`` in a chain of wrappers, if any."""
    from kvsessions.wrappers.cache import CachedStore  # lazy: redis is imported only when asked for

    seen = 0
    current: Any = store
    while current is not None and seen < 10:
        if isinstance(current, CachedStore):
            return current.statistics()
        current = getattr(current, "inner", None)
        seen += 1
    return None
