"""What a store keeps per event loop: drivers whose connections belong to one loop.

asyncpg connections, redis-py clients and PyMongo's ``AsyncMongoClient`` work only in the
event loop that made them. Applications run one store under many loops: frameworks call
``asyncio.run`` (or ``Runner.run_sync``) again and again, and threads run loops of their own.
So a store makes one client (or pool) per loop that uses it, on that loop's first call:
``PerLoop`` holds them, keyed by the loop, guarded by a ``threading.Lock`` (never an asyncio
lock, which belongs to one loop itself) that is never held across an ``await``.

A client is closed with the store, or when its loop ends: each one is watched by an async
generator started in its loop, which ``asyncio.run`` and ``Runner.close`` close (through
``loop.shutdown_asyncgens``) while the loop still runs, so the client's connections are closed
in the loop they belong to. A loop closed without that (``loop.close()`` alone) has its entry
dropped on the next lookup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kvsessions.errors import EventLoopError

__all__ = ["PerLoop", "describe_loop"]

_T = TypeVar("_T")

#: Seconds ``close`` waits for a client in a loop that runs in another thread to close.
_CLOSE_ELSEWHERE_TIMEOUT = 5.0


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """A loop's name in errors (its id, and the thread when it is the running loop)."""
    try:
        running = asyncio.get_running_loop() is loop
    except RuntimeError:
        running = False
    thread = f" in thread {threading.current_thread().name!r}" if running else ""
    return f"event loop {id(loop):#x}{thread}"


@dataclass
class _Entry(Generic[_T]):
    item: _T
    #: Closes ``item`` when its loop shuts down (or when ``aclose``d by the store).
    watcher: AsyncGenerator[None, None]


class PerLoop(Generic[_T]):
    """One ``_T`` per event loop, made by ``make()`` in that loop on its first ``get`` and
    closed by ``dispose(item)`` in that loop."""

    def __init__(self, make: Callable[[], Awaitable[_T]],
                 dispose: Callable[[_T], Awaitable[None]]) -> None:
        self._make = make
        self._dispose = dispose
        self._lock = threading.Lock()
        self._entries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Entry[_T]] = (
            weakref.WeakKeyDictionary())
        self._first_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._first_described = ""
        #: The loop that asked last and its item: a lookup without hashing a weak reference
        #: (the common case is one loop asking again and again). Read and replaced whole.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], _T] | None = None
        #: Loops whose item is being made, and the future its other callers wait on.
        self._making: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Future[None]] = weakref.WeakKeyDictionary()

    def current(self) -> _T:
        """The running loop's item (``get`` made it); ``EventLoopError`` if there is none."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        entry = self._entries.get(loop)
        if entry is None:
            raise EventLoopError(f"nothing was opened for {describe_loop(loop)}")
        self._last = (weakref.ref(loop), entry.item)
        return entry.item

    def made(self) -> bool:
        """Whether the running loop has its item already (then ``get`` need not be awaited)."""
        last = self._last
        return last is not None and last[0]() is asyncio.get_running_loop()

    def __len__(self) -> int:
        """How many loops (not closed) hold an item now."""
        with self._lock:
            return sum(not loop.is_closed() for loop in self._entries)

    def first_loop_if_other(self) -> str | None:
        """The first loop an item was made in, described, unless it is the running loop: for
        a client handed in, which belongs to that loop for good (even once it has ended)."""
        if self._first_loop is None:
            return None
        first = self._first_loop()
        if first is asyncio.get_running_loop():
            return None
        return self._first_described

    async def get(self) -> _T:
        """The running loop's item, made on its first call (once, however many tasks ask)."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        entry = self._entries.get(loop)
        if entry is not None:
            self._last = (weakref.ref(loop), entry.item)
            return entry.item
        while True:
            with self._lock:
                self._forget_closed_loops()
                entry = self._entries.get(loop)
                if entry is not None:
                    return entry.item
                waiting = self._making.get(loop)
                if waiting is None:
                    self._making[loop] = loop.create_future()
            if waiting is None:
                break
            await asyncio.shield(waiting)  # the maker's outcome; then look again
        try:
            item = await self._make()
            watcher = self._watch(item)
            await watcher.asend(None)  # started in this loop: it closes at the loop's end
        finally:
            with self._lock:
                made = self._making.pop(loop)
            if not made.done():
                made.set_result(None)
        with self._lock:
            self._entries[loop] = _Entry(item, watcher)
            self._last = (weakref.ref(loop), item)
            if self._first_loop is None:
                self._first_loop = weakref.ref(loop)
                self._first_described = describe_loop(loop)
        return item

    async def _watch(self, item: _T) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self._dispose(item)

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._entries if loop.is_closed()]:
            del self._entries[loop]

    async def close(self) -> None:
        """Close every item: this loop's here, one in a loop running in another thread there
        (waiting for it, bounded), one in a loop that is not running when that loop ends."""
        with self._lock:
            entries = list(self._entries.items())
            self._entries.clear()
            self._last = None
        here = asyncio.get_running_loop()
        elsewhere: list[concurrent.futures.Future[None]] = []
        errors: list[BaseException] = []
        for loop, entry in entries:
            if loop is here:
                try:
                    await entry.watcher.aclose()
                except Exception as exc:
                    errors.append(exc)
            elif loop.is_running():
                with contextlib.suppress(RuntimeError):  # it closed meanwhile
                    elsewhere.append(asyncio.run_coroutine_threadsafe(entry.watcher.aclose(),
                                                                      loop))
            # else: a loop that is not running closes its watcher (and item) when it ends
        if elsewhere:
            await asyncio.wait([asyncio.wrap_future(future) for future in elsewhere],
                               timeout=_CLOSE_ELSEWHERE_TIMEOUT)
        if errors:
            raise errors[0]
