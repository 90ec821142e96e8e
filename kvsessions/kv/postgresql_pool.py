"""The PostgreSQL store's connections: a small pool of its own, or the caller's pool.

Taking an idle connection from our pool is a list pop, where ``asyncpg.Pool`` adds an
acquire/release cycle (and a reset query) measured at 30 % of a point read. A caller's
``asyncpg.Pool`` is used as it is and never closed. A connection whose statement was cancelled
is kept only once the server is done with that statement (see ``_settle_after_cancel``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

try:
    import asyncpg
except ImportError:
    asyncpg = None

__all__ = ["CallerPool", "Connection", "OwnPool", "PoolTimeoutError"]

Connection: TypeAlias = Any  # asyncpg.Connection or a pool's proxy of one (asyncpg is untyped)

#: Seconds a cancelled call waits for the server to finish or abandon its statement.
_SETTLE_TIMEOUT = 5.0


class PoolTimeoutError(TimeoutError):
    """Every connection stayed busy for ``acquire_timeout`` seconds (back-pressure)."""


class OwnPool:
    """``min_size``..``max_size`` connections made by the store. An idle one is taken without
    an await; a semaphore bounds the total and makes callers queue, for ``acquire_timeout``."""

    def __init__(self, connect: Callable[[], Awaitable[Connection]], min_size: int,
                 max_size: int, acquire_timeout: float) -> None:
        self._connect = connect
        self._min_size = min_size
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._slots = asyncio.Semaphore(max_size)
        self._closed = False

    async def start(self) -> Connection:
        """Make ``min_size`` connections (at least one, returned checked out for setup)."""
        first = await self._new_connection()
        await self._slots.acquire()
        extra = await asyncio.gather(
            *(self._new_connection() for _ in range(self._min_size - 1)),
            return_exceptions=True)
        for result in extra:
            if isinstance(result, BaseException):
                raise result
            self._idle.append(result)
        return first

    async def _new_connection(self) -> Connection:
        connection = await self._connect()
        self._open.add(connection)
        return connection

    async def acquire(self) -> Connection:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._acquire_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolTimeoutError(
                    f"no connection became free within {self._acquire_timeout:g} s "
                    f"(max_pool_size={self._max_size}); raise max_pool_size or "
                    "acquire_timeout") from None
        else:
            await self._slots.acquire()
        try:
            while self._idle:
                connection = self._idle.pop()
                if not connection.is_closed():
                    return connection
                self._open.discard(connection)
            return await self._new_connection()
        except BaseException:
            self._slots.release()
            raise

    async def release(self, connection: Connection, error: BaseException | None) -> None:
        if isinstance(error, asyncio.CancelledError) and not self._closed:
            error = await _settle_after_cancel(connection, error)
        if not self._closed and (error is None or _still_usable(connection, error)):
            self._idle.append(connection)
        else:
            self._open.discard(connection)
            connection.terminate()
        self._slots.release()

    async def close(self) -> None:
        self._closed = True  # a connection still in use is terminated when it comes back
        open_connections, self._open = self._open, set()
        idle, self._idle = set(self._idle), []
        for connection in open_connections:
            if connection in idle:
                try:
                    await connection.close(timeout=2)
                except Exception:
                    connection.terminate()


class CallerPool:
    """A caller's ``asyncpg.Pool``: connections are borrowed per operation, never closed."""

    def __init__(self, pool: Any, acquire_timeout: float) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    async def acquire(self) -> Connection:
        try:
            async with asyncio.timeout(self._acquire_timeout):
                return await self._pool.acquire()
        except TimeoutError:
            raise PoolTimeoutError(
                f"no connection of the pool passed in became free within "
                f"{self._acquire_timeout:g} s") from None

    async def release(self, connection: Connection, error: BaseException | None) -> None:
        await self._pool.release(connection)

    async def close(self) -> None:
        pass


async def _settle_after_cancel(connection: Connection,
                               error: BaseException) -> BaseException | None:
    """A cancelled statement may still run on the server and, left alone, commit after the
    caller's next statement on another connection (bringing back the value it overwrote).
    asyncpg asks the server to cancel it and reads its outcome; one ``SELECT 1`` waits for that
    (bounded, and shielded from a second cancellation), so the cancelled call returns only once
    the server is done with it. None when the connection is idle again and can be kept."""

    async def ping() -> BaseException | None:
        try:
            async with asyncio.timeout(_SETTLE_TIMEOUT):
                await connection.fetchval("SELECT 1")
        except Exception as exc:  # a server error (the cancel itself) keeps the connection
            return exc
        return error if connection.is_in_transaction() else None

    try:
        return await asyncio.shield(asyncio.ensure_future(ping()))
    except asyncio.CancelledError:
        return error  # cancelled again: stop waiting, drop the connection


def _still_usable(connection: Connection, error: BaseException) -> bool:
    """After an error the server reported, the connection is fine; after anything else
    (cancellation, a timeout, a broken socket) its state is unknown, so it is dropped."""
    return (isinstance(error, asyncpg.PostgresError)
            and not isinstance(error, asyncpg.PostgresConnectionError)
            and not connection.is_closed() and not connection.is_in_transaction())
