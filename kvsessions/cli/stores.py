"""Opening the store a command's URL names, within a connect timeout: a server that never
answers becomes one line naming the (redacted) URL, not a hang, and whatever was opened is
closed again on every way out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from kvsessions.errors import StoreUnavailableError
from kvsessions.kv.base import KVStore
from kvsessions.kv.registry import open_store
from kvsessions.sessions.storage import SessionStorage
from kvsessions.urls import redact_url

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "opened_session_storage", "opened_store"]

#: Seconds allowed for connecting to a store before the command gives up with one line.
DEFAULT_CONNECT_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def _connected(url: str, timeout: float, connect: Callable[[], Awaitable[object]],
                     close: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    try:
        await asyncio.wait_for(connect(), timeout)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await close()
        raise StoreUnavailableError(
            f"{redact_url(url)} did not answer within {timeout:g} s "
            "(is the server running and reachable?)") from None
    except BaseException:
        with contextlib.suppress(Exception):
            await close()
        raise
    try:
        yield
    finally:
        await close()


@contextlib.asynccontextmanager
async def opened_store(url: str, timeout: float = DEFAULT_CONNECT_TIMEOUT
                       ) -> AsyncIterator[KVStore]:
    """The store ``url`` names, connected within ``timeout`` seconds, closed afterwards."""
    store = open_store(url)
    async with _connected(url, timeout, store.open, store.close):
        yield store


@contextlib.asynccontextmanager
async def opened_session_storage(url: str, timeout: float = DEFAULT_CONNECT_TIMEOUT
                                 ) -> AsyncIterator[SessionStorage]:
    """A ``SessionStorage`` on the store ``url`` names, initialised within ``timeout`` s."""
    storage = SessionStorage(open_store(url))
    async with _connected(url, timeout, storage.initialize, storage.close):
        yield storage
