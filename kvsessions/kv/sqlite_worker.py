"""The SQLite store's own thread: one ``sqlite3`` connection, one daemon thread, one queue.

Why not aiosqlite: it hops to its thread once per call (a read is ``execute`` then
``fetchall``: two hops), and running several statements as one unit (a transaction that no
other task's statement can enter) needed its private ``_execute`` and ``_conn``. Here a store
operation is one function run on the thread with the connection, whatever it does: one hop.

Writes share commits (group commit). A write job (``write``) runs inside a ``BEGIN
IMMEDIATE`` transaction the thread opens; the write jobs queued behind it when it starts run in
the same transaction, and one ``COMMIT`` (one WAL append, one fsync with
``synchronous=FULL``) ends them all. Each caller is told "done" only after that commit, and a
failed commit fails every job in it. A job that raises (or ends with ``Discard``) must not
take the others with it: the transaction is rolled back, the jobs before it run again in a
fresh one (they only read and write the database, so running them again has the same
effect, and nobody has been told anything yet), and it gets its own outcome. Savepoints would
do the same for every job; this costs nothing unless a job fails, which is rare, and each
statement on this thread has to win the GIL back from the event loop (see ``_serve``).

The store may run a write job on its event loop instead (``sqlite_loop``), but only while this
thread is idle: no job queued or running (``idle``), so a job queued here always runs before
any later write of the same store, wherever that one runs. A checkpoint the loop asks for
(``run_in_background``) is a job like the others: writes queue behind it while it runs, as
they wait for SQLite's own automatic checkpoint in a commit.

The thread is a daemon, so a process that never closes its store still exits (what was
committed is in the database; SQLite rolls back an unfinished transaction, as after a crash).
Jobs run in the order they were queued, so a write whose caller was cancelled still finishes
before that store's next write starts. An exception raised by a job goes to its caller, never
to the thread (no traceback on stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Discard", "SQLiteWorker", "Step", "write_together"]

_T = TypeVar("_T")
logger = logging.getLogger("kvsessions.kv.sqlite")
#: Write jobs at most in one shared transaction (bounds the time a commit keeps callers).
MAX_SHARED = 64


class Discard(Exception):
    """Raised by a write job: undo this job's writes (only its) and return ``result``."""

    def __init__(self, result: object) -> None:
        super().__init__()
        self.result = result


@dataclass(slots=True)
class Step:
    """A job's function and, once it ran, its outcome."""

    function: Callable[[Any], Any]
    #: True: one statement, which SQLite makes atomic by itself when the job runs alone.
    single: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True, kw_only=True)
class _Job(Step):
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    #: True: runs inside a transaction shared with the write jobs queued beside it.
    shared: bool


_STOP = object()


class SQLiteWorker:
    """Runs ``function(connection)`` on its thread; ``start`` makes the connection there."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._connection: sqlite3.Connection | None = None
        self._stopping = False
        #: Jobs queued or running; changed under ``_counting`` (callers of several threads).
        self._unfinished = 0
        self._counting = threading.Lock()

    async def start(self, connect: Callable[[], sqlite3.Connection]) -> None:
        def open_connection(_: object) -> None:
            self._connection = connect()

        self._thread.start()
        try:
            await self.run(open_connection)
        except BaseException:
            await self.stop()
            raise

    @property
    def idle(self) -> bool:
        """No job queued or running: a write made elsewhere now cannot overtake one here."""
        return self._unfinished == 0

    def _queue(self, job: _Job) -> None:
        if self._stopping:
            raise ValueError("the SQLite connection is closed")
        self._put(job)

    def _put(self, job: _Job) -> None:
        with self._counting:
            self._unfinished += 1
        self._jobs.put(job)

    def _finished(self, count: int) -> None:
        with self._counting:
            self._unfinished -= count

    async def run(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        """``function(connection)`` on the thread, as one step no other job can enter (in
        autocommit mode: it opens and ends any transaction it needs)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue(_Job(function, future=future, loop=loop, shared=False))
        return await future

    def run_in_background(self, function: Callable[[sqlite3.Connection], object],
                          what: str) -> None:
        """Queue ``function(connection)`` like ``run`` without waiting for it: ``stop`` still
        runs it first, and an error it raises is logged (``what`` it was doing), not lost.
        Nothing is queued once the worker is stopping. Call it on an event loop."""
        def logged(db: sqlite3.Connection) -> None:
            try:
                function(db)
            except Exception:
                logger.exception("the SQLite store's thread could not %s", what)

        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError):  # stopping: nothing more runs on the thread
            self._queue(_Job(logged, future=loop.create_future(), loop=loop, shared=False))

    async def write(self, function: Callable[[sqlite3.Connection], _T], *,
                    single: bool = False) -> _T:
        """``function(connection)`` inside a write transaction (``BEGIN IMMEDIATE``) that
        the write jobs queued beside it share; it returns once that transaction committed.
        ``function`` must not begin or end transactions; it raises ``Discard(result)`` to
        undo its own writes. It may run more than once (see the module docstring).
        ``single``: it runs one statement, so alone it runs in autocommit mode (two
        statements fewer than its own transaction)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue(_Job(function, single, future=future, loop=loop, shared=True))
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
        self._put(_Job(self._close_connection, future=closed, loop=loop, shared=False))
        self._jobs.put(_STOP)
        await closed

    def _close_connection(self, _: object) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _serve(self) -> None:
        """Take the next job, and with a write job every write job queued behind it (up to
        ``MAX_SHARED``); a job of another kind waits for the next round, so order holds. A
        one-statement write with nothing queued behind it runs on its own, in autocommit."""
        held: Any = None
        while True:
            job = held if held is not None else self._jobs.get()
            held = None
            if job is _STOP:
                return
            if not job.shared or (job.single and self._jobs.empty()):
                run_alone(self._connection, job)
                self._finished(1)
                _deliver([job])
                continue
            jobs = [job]
            while len(jobs) < MAX_SHARED:
                try:
                    following = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if following is _STOP or not following.shared:
                    held = following
                    break
                jobs.append(following)
            assert self._connection is not None
            write_together(self._connection, jobs)
            self._finished(len(jobs))
            _deliver(jobs)
            del job, jobs  # no reference kept while waiting for the next job


def run_alone(db: sqlite3.Connection | None, step: Step) -> None:
    """Run ``step`` as it is (in autocommit mode); its outcome in the step."""
    try:
        step.result = step.function(db)
    except BaseException as exc:  # the caller's to handle, not the thread's
        step.error = exc


def write_together(db: sqlite3.Connection, steps: Sequence[Step]) -> None:
    """Run ``steps`` in one write transaction and commit it; each step's outcome in the step
    (the module docstring says why a failing step makes the ones before it run again)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except BaseException as exc:
        for step in steps:
            step.error = exc
        return
    for index, step in enumerate(steps):
        try:
            step.result = step.function(db)
        except BaseException as exc:
            step.result, step.error = None, exc
        else:
            continue
        # Undo the transaction; the steps before this one run again without it.
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        if isinstance(step.error, Discard):
            step.result, step.error = step.error.result, None
        if index:
            write_together(db, steps[:index])
        if index + 1 < len(steps):
            write_together(db, steps[index + 1:])
        return
    try:
        db.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        for step in steps:
            step.result, step.error = None, exc


def _deliver(jobs: list[_Job]) -> None:
    """Settle the jobs' futures: one wake-up per event loop, however many jobs. A cursor a
    job returned is closed here, on the thread: freed on the caller's thread, it would reset
    its statement while this thread uses the connection (SQLite: "bad parameter or other API
    misuse", seen when a collection on the loop's thread freed one mid-transaction)."""
    for job in jobs:
        if isinstance(job.result, sqlite3.Cursor):
            job.result.close()
            job.result = None
    if len(jobs) == 1:
        job = jobs[0]
        with contextlib.suppress(RuntimeError):  # the caller's loop has closed meanwhile
            job.loop.call_soon_threadsafe(_settle_one, job.future, job.result, job.error)
        job.result = job.error = None
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any,
                                                        BaseException | None]]] = {}
    for job in jobs:
        by_loop.setdefault(job.loop, []).append((job.future, job.result, job.error))
        job.result = job.error = None  # no reference kept on the thread
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop has closed meanwhile
            loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        _settle_one(future, result, error)


def _settle_one(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
