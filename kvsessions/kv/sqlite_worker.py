"""The SQLite store's own thread: one ``sqlite3`` connection, one daemon thread, one queue.

Why not aiosqlite: it hops to its thread once per call (a read is ``execute`` then
``fetchall``: two hops), and running several statements as one unit (a transaction that no
other task's statement can enter) needed its private ``_execute`` and ``_conn``. Here a store
operation is one function run on the thread with the connection, whatever it does: one hop.

The thread is a daemon, so a process that never closes its store still exits (what was
committed is in the database; SQLite rolls back an unfinished transaction, as after a crash).
Jobs run in the order they were queued, so a write whose caller was cancelled still finishes
before that store's next write starts. An exception raised by a job goes to its caller, never
to the thread (no traceback on stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["SQLiteWorker"]

_T = TypeVar("_T")
_Job = tuple[Callable[[Any], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class SQLiteWorker:
    """Runs ``function(connection)`` on its thread; ``start`` makes the connection there."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._connection: sqlite3.Connection | None = None
        self._stopping = False

    async def start(self, connect: Callable[[], sqlite3.Connection]) -> None:
        def open_connection(_: object) -> None:
            self._connection = connect()

        self._thread.start()
        try:
            await self.run(open_connection)
        except BaseException:
            await self.stop()
            raise

    async def run(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        """``function(connection)`` on the thread, as one step no other job can enter."""
        if self._stopping:
            raise ValueError("the SQLite connection is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((function, future, loop))
        return await future

    async def execute_fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """One statement and all its rows, in one hop (for tests and benchmarks)."""
        return await self.run(lambda db: db.execute(sql, parameters).fetchall())

    async def stop(self) -> None:
        """Close the connection after the jobs already queued, and end the thread."""
        if self._stopping:
            return
        self._stopping = True
        if not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()
        self._jobs.put((self._close_connection, closed, loop))
        self._jobs.put(None)
        await closed

    def _close_connection(self, _: object) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, future, loop = job
            try:
                result = function(self._connection)
            except BaseException as exc:  # the caller's to handle, not the thread's
                _deliver(loop, future, None, exc)
            else:
                _deliver(loop, future, result, None)
            del job, function, future  # no reference kept while waiting for the next job


def _deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
             error: BaseException | None) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    with contextlib.suppress(RuntimeError):  # the caller's loop has closed meanwhile
        loop.call_soon_threadsafe(settle)
