"""What the integrations share: the storage a user's argument names, and the event loop that
runs its coroutines for async and sync callers alike.

Frameworks call a store both ways: LangChain and LangGraph have a sync and an async form of each
method, and a sync one may be called inside a running event loop (a notebook, a sync node of an
async graph). A store's connections belong to the loop that opened them (asyncpg, redis-py and
pymongo refuse to be used from another), so every call is run on the store's *home loop*:

* given a URL, the integration opens the store itself, on a loop of its own in a daemon thread,
  and sends every call there: sync calls from anywhere, even inside a running loop, work;
* given a ``SessionStorage`` or ``KVStore`` (the caller's), the home loop is the first loop that
  uses it; calls from another thread or loop are sent to the home loop while it runs. A sync call
  made inside the home loop itself could only block it forever, so it raises a ``StoreError``
  that says to await the async form (or to pass a URL). When the home loop has ended (one
  ``asyncio.run`` after another), the next caller's loop becomes home.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from kvsessions.errors import StoreError
from kvsessions.integrations.storage_source import StorageSource, session_storage
from kvsessions.sessions.storage import SessionStorage

__all__ = ["StorageTarget", "StoreLoop", "storage_for"]

_T = TypeVar("_T")

#: What an integration accepts as its store (one definition: ``storage_source``).
StorageTarget = StorageSource


def storage_for(target: StorageTarget) -> tuple[SessionStorage, bool]:
    """The storage ``target`` names, and whether the integration opened it (and so closes it,
    and runs it on a thread of its own)."""
    return session_storage(target)


class StoreLoop:
    """The home loop of one store: runs coroutines there for async and sync callers."""

    def __init__(self, *, own_thread: bool) -> None:
        self._own_thread = own_thread
        self._home: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Await ``work`` on the home loop, from an async caller."""
        here = asyncio.get_running_loop()
        home = self._home_for(here)
        if home is here:
            return await work
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, home))

    def run_sync(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` on the home loop and wait for it, from a sync caller."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        home = self._home_for(None)
        if home is here:
            work.close()
            raise StoreError(
                "a sync method was called inside the event loop that runs its store, which it "
                "would block forever; await the async method (aget_..., aput_...) there, or "
                "pass a store URL so the store runs on a thread of its own")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(work, home)
        return future.result()

    def _home_for(self, caller: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
        """The home loop; a caller's loop (None: a sync caller) becomes home when there is
        none running and the store is the caller's."""
        with self._lock:
            home = self._home
            if home is not None and (home.is_running() or home is caller) \
                    and not home.is_closed():
                return home
            home = self._start_thread() if self._own_thread or caller is None else caller
            self._home = home
            return home

    def _start_thread(self) -> asyncio.AbstractEventLoop:
        if self._thread is not None and self._home is not None and self._home.is_running():
            return self._home
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="kvsessions-store-loop", daemon=True)
        self._thread.start()
        started.wait()
        return loop

    def stop(self) -> None:
        """End the thread this object started (after the store is closed)."""
        with self._lock:
            thread, home = self._thread, self._home
            self._thread = None
            if thread is None or home is None:
                return
            self._home = None
        home.call_soon_threadsafe(home.stop)
        thread.join()
        home.close()
