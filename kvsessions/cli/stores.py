"""Opening the store a command's URL names, within a connect timeout: a server that never
answers becomes one line naming the (redacted) URL, not a hang, and whatever was opened is
closed again on every way out. Only commands that write a new store (``demo``, ``import``, the
destination of ``migrate``) may create one: the others look first
(``kvsessions.cli.existing``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from kvsessions.cli.existing import check_store_exists
from kvsessions.errors import StoreUnavailableError
from kvsessions.kv.base import KVStore
from kvsessions.kv.registry import open_store
from kvsessions.sessions.storage import SessionStorage
from kvsessions.urls import redact_url

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "opened_session_storage", "opened_store", "store_argument"]

logger = logging.getLogger("kvsessions.cli")

#: Endings that make a bare store argument clearly a SQLite file.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".db3")


def store_argument(text: str) -> str:
    """argparse type of a store argument: a URL, or a bare path that is clearly a SQLite file
    (an existing file, or a name ending in .db, .sqlite, .sqlite3 or .db3): ``sessions.db`` is
    ``sqlite:///sessions.db``, ``/srv/app.db`` is ``sqlite:////srv/app.db``. Anything else is
    left as given, for the URL check to refuse in its own words."""
    if "://" in text or not text.strip():
        return text
    if text.lower().endswith(SQLITE_SUFFIXES) or Path(text).is_file():
        return "sqlite:///" + quote(text, safe="/")
    return text


#: Seconds allowed for connecting to a store before the command gives up with one line.
DEFAULT_CONNECT_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def _connected(url: str, timeout: float, connect: Callable[[], Awaitable[object]],
                     close: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    logger.info("opening %s", redact_url(url))
    started = time.perf_counter()
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
    logger.info("opened %s in %.2f s", redact_url(url), time.perf_counter() - started)
    try:
        yield
    finally:
        await close()
        logger.info("closed %s", redact_url(url))


@contextlib.asynccontextmanager
async def opened_store(url: str, timeout: float = DEFAULT_CONNECT_TIMEOUT, *,
                       create: bool = False) -> AsyncIterator[KVStore]:
    """The store ``url`` names, connected within ``timeout`` seconds, closed afterwards; one
    that does not exist is refused unless ``create``."""
    store = open_store(url)
    if not create:
        await asyncio.to_thread(check_store_exists, store, redact_url(url))
        store.create_missing = False
    async with _connected(url, timeout, store.open, store.close):
        yield store


@contextlib.asynccontextmanager
async def opened_session_storage(url: str, timeout: float = DEFAULT_CONNECT_TIMEOUT, *,
                                 create: bool = False) -> AsyncIterator[SessionStorage]:
    """A ``SessionStorage`` on the store ``url`` names, initialised within ``timeout`` s; one
    that does not exist is refused unless ``create``."""
    store = open_store(url)
    if not create:
        await asyncio.to_thread(check_store_exists, store, redact_url(url))
        store.create_missing = False
    storage = SessionStorage(store)
    async with _connected(url, timeout, storage.initialize, storage.close):
        yield storage
