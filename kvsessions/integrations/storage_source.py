"""What every integration accepts as its storage: a store URL, a ``SessionStorage`` or a
``KVStore``, so that switching a framework's session store is one changed line.

A storage made here from a URL or a store belongs to the adapter only as far as it made it: a
URL's store is opened and closed by the adapter, a ``SessionStorage`` or ``KVStore`` the caller
passed in is theirs to close (closing what the caller owns is a mistake this project avoids).

One storage serves every event loop an application reaches an adapter from (``asyncio.run``
once per request, the SDK helper that runs a call on a loop of its own in another thread): each
store keeps its driver's clients per loop itself (``kvsessions.kv.loops``). A ``CachedStore``
(``cache_url=``) serves one running loop at a time and follows the next one once it has ended.
"""

from __future__ import annotations

from typing import Any

from kvsessions.kv.base import KVStore
from kvsessions.sessions.storage import SessionStorage

__all__ = ["StorageSource", "session_storage"]

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
