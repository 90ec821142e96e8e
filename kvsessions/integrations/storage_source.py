"""What every integration accepts as its storage: a store URL, a ``SessionStorage`` or a
``KVStore``, so that switching a framework's session store is one changed line.

A storage made here from a URL or a store belongs to the adapter only as far as it made it: a
URL's store is opened and closed by the adapter, a ``SessionStorage`` or ``KVStore`` the caller
passed in is theirs to close (closing what the caller owns is a mistake this project avoids).
"""

from __future__ import annotations

import asyncio
from typing import Any

from kvsessions.kv.base import KVStore
from kvsessions.sessions.storage import SessionStorage

__all__ = ["AdapterStorage", "StorageSource", "session_storage"]

#: A store URL (``sqlite:///chats.db``, ``redis://127.0.0.1:6379/0``...), a storage or a store.
StorageSource = str | SessionStorage | KVStore


def session_storage(source: StorageSource, **options: Any) -> tuple[SessionStorage, bool]:
    """The ``SessionStorage`` on ``source`` and whether the caller of this function owns it
    (it was made from a URL, so closing it is theirs). ``options`` go to ``open_store`` and
    are only allowed with a URL."""
    if isinstance(source, SessionStorage | KVStore) and options:
        raise TypeError(f"store options ({', '.join(sorted(options))}) go with a URL, "
                        f"not with a {type(source).__name__}")
    if isinstance(source, SessionStorage):
        return source, False
    if isinstance(source, KVStore):
        return SessionStorage(source), False
    if isinstance(source, str):
        return SessionStorage.from_url(source, **options), True
    raise TypeError(f"expected a store URL, a SessionStorage or a KVStore, "
                    f"not {type(source).__name__}")


class AdapterStorage:
    """The storage of one adapter object, one per event loop for a storage it made.

    A server store's connections belong to the event loop that opened them. An application
    that calls ``asyncio.run`` once per request, or the SDK helper that runs a call on a loop
    of its own in another thread, reaches the adapter from several loops: a storage made here
    from a URL is opened once per loop (those of loops that have closed are dropped: their
    connections died with them). Each is a client of the same store, as two processes are. A
    storage or store the caller passed in is theirs: it is used as it is, from any loop.
    """

    def __init__(self, source: StorageSource, **options: Any) -> None:
        self._first, self.owned = session_storage(source, **options)
        self._source, self._options = source, options
        self._by_loop: dict[asyncio.AbstractEventLoop, SessionStorage] = {}
        self._first_used = False

    @property
    def current(self) -> SessionStorage:
        """The storage for the running loop (the first one, outside any loop)."""
        if not self.owned:
            return self._first
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._first
        storage = self._by_loop.get(loop)
        if storage is None:
            for old in [old for old in self._by_loop if old.is_closed()]:
                del self._by_loop[old]
            if not self._by_loop and not self._first_used:
                storage = self._first
            else:
                assert isinstance(self._source, str)
                storage = SessionStorage.from_url(self._source, **self._options)
            self._first_used = True
            self._by_loop[loop] = storage
        return storage

    async def close(self) -> None:
        """Close the storage of the running loop when it was made here (those of other loops
        that still run are closed by ``close`` called there); a caller's is left open."""
        if self.owned:
            storage = self.current
            self._by_loop = {loop: other for loop, other in self._by_loop.items()
                             if other is not storage}
            await storage.close()
