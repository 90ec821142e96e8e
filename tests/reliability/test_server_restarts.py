"""Server restarts under load (issue 7, point 5).

A store is opened on a private server (tests/reliability/private_servers.py; the shared ones
are never touched), a stream of writes and reads runs against it, and the server is stopped —
cleanly or by a crash — and started again on the same port. While it is down every call must
fail with ``StoreUnavailableError`` (never a raw driver exception) within the configured
timeouts; once it is back, the very first call succeeds, on the same store object, without
reopening it. Then the server goes down again while the store sits idle, with dead connections
in its pool, and again the first call after the restart succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from kvsessions.errors import StoreUnavailableError
from kvsessions.kv.base import KVStore
from kvsessions.kv.mongodb import MongoDBStore
from kvsessions.kv.postgresql import PostgreSQLStore
from kvsessions.kv.redis import RedisStore
from tests.reliability.private_servers import PrivatePostgres, PrivateRedis, PrivateSecantus

#: Timeouts given to every store here (seconds); a failing call may take this long, plus
#: slack for a loaded machine, and no longer.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 3.0
HANG_BOUND = CONNECT_TIMEOUT + COMMAND_TIMEOUT + 2.0


def document(n: int) -> bytes:
    return orjson.dumps({"kind": "message", "v": 1, "n": n})


@dataclass
class Tally:
    """What happened to the calls of one run."""

    ok: int = 0
    unavailable: int = 0
    #: anything else that reached the caller: must stay empty
    other: list[str] = field(default_factory=list)
    #: calls that started after the server was back and did not succeed: must stay empty
    failed_after_back: list[str] = field(default_factory=list)
    slowest_failure: float = 0.0

    def row(self) -> str:
        return (f"ok={self.ok} unavailable={self.unavailable} other={len(self.other)} "
                f"failed_after_back={len(self.failed_after_back)} "
                f"slowest_failure={self.slowest_failure:.2f}s")


class Stream:
    """Writes then reads back key after key until stopped, tallying each outcome."""

    def __init__(self, store: KVStore, tally: Tally) -> None:
        self.store = store
        self.tally = tally
        self.back_at: float | None = None  # monotonic time the server was up again
        self.stopping = False
        self.written: dict[str, int] = {}

    async def call(self, what: str, operation: Awaitable[Any]) -> Any:
        started = time.monotonic()
        try:
            result = await operation
        except StoreUnavailableError as exc:
            elapsed = time.monotonic() - started
            self.tally.unavailable += 1
            self.tally.slowest_failure = max(self.tally.slowest_failure, elapsed)
            if self.back_at is not None and started > self.back_at:
                self.tally.failed_after_back.append(f"{what}: {exc}")
            return None
        except Exception as exc:  # a raw driver exception or a wrong class: recorded, fails
            self.tally.other.append(f"{what}: {type(exc).__module__}.{type(exc).__name__}: "
                                    f"{exc}")
            return None
        self.tally.ok += 1
        return result

    async def run(self) -> None:
        n = 0
        while not self.stopping:
            n += 1
            key = f"stream:{n:06d}"
            await self.call("put", self.store.put(key, document(n)))
            value = await self.call("get", self.store.get(key))
            if value is not None:
                assert orjson.loads(value)["n"] == n
                self.written[key] = n
            await asyncio.sleep(0.002)

    async def wait_for_successes(self, count: int, timeout: float = 30.0) -> None:
        target = self.tally.ok + count
        deadline = time.monotonic() + timeout
        while self.tally.ok < target:
            assert time.monotonic() < deadline, f"stream made no progress: {self.tally.row()}"
            await asyncio.sleep(0.01)


async def outage_calls(store: KVStore, tally: Tally, count: int) -> None:
    """Calls made by the test itself while the server is down: each one must raise
    StoreUnavailableError within the timeouts."""
    for i in range(count):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            if i % 2:
                await store.put(f"outage:{i}", document(i))
            else:
                await store.get("stream:000001")
        elapsed = time.monotonic() - started
        tally.slowest_failure = max(tally.slowest_failure, elapsed)
        tally.unavailable += 1


async def restart_under_load(store: KVStore, stop: Callable[[], None],
                             start: Callable[[], None], soak: int, *,
                             persistent: bool = True) -> Tally:
    """The whole scenario (see the module docstring) on ``store``; ``stop``/``start`` act on
    its server. ``persistent``: the server keeps its data across a restart."""
    tally = Tally()
    async with store:
        stream = Stream(store, tally)
        task = asyncio.create_task(stream.run())
        try:
            for _ in range(soak):
                await stream.wait_for_successes(20)
                await asyncio.to_thread(stop)
                await outage_calls(store, tally, 6)
                await asyncio.to_thread(start)
                stream.back_at = time.monotonic()
                # the first call after the server is back succeeds, on the same store
                await store.put("first-after-restart", document(0))
                tally.ok += 1
                await stream.wait_for_successes(20)
                stream.back_at = None
        finally:
            stream.stopping = True
            await asyncio.wait_for(task, HANG_BOUND * 2)

        # Down and up again while the store is idle: its pool holds dead connections now.
        for round_ in range(soak):
            await asyncio.to_thread(stop)
            await asyncio.to_thread(start)
            await store.put(f"first-after-idle-restart:{round_}", document(round_))
            tally.ok += 1
            value = await store.get(f"first-after-idle-restart:{round_}")
            assert value is not None and orjson.loads(value)["n"] == round_
        if persistent:  # what the stream saw acknowledged is still there
            last = max(stream.written)
            value = await store.get(last)
            assert value is not None and orjson.loads(value)["n"] == stream.written[last]
    print(f"\n{store!r}: {tally.row()}")
    assert not tally.other, tally.other[:5]
    assert not tally.failed_after_back, tally.failed_after_back[:5]
    assert tally.unavailable >= 6 * soak
    assert tally.slowest_failure <= HANG_BOUND, tally.row()
    return tally


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgresql_restart_under_load(private_postgres: PrivatePostgres, mode: str,
                                             soak: int) -> None:
    """``fast``: the server disconnects every client and shuts down; ``immediate``: it dies
    as in a crash and runs recovery when it starts again."""
    server = private_postgres
    store = PostgreSQLStore(server.url(), namespace=f"restart_{mode}", min_pool_size=2,
                            max_pool_size=4, connect_timeout=CONNECT_TIMEOUT,
                            command_timeout=COMMAND_TIMEOUT, acquire_timeout=COMMAND_TIMEOUT)
    try:
        await restart_under_load(store, lambda: server.stop(mode), server.start, soak)
    finally:
        if not server.running:
            server.start()


# ------------------------------------------------------------------ Redis


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_redis_restart_under_load(kill: bool, soak: int) -> None:
    """A redis-server without persistence: the data goes with it, the connections must not
    stay broken (redis-py reconnects; the store allows it one retry)."""
    with PrivateRedis() as server:
        store = RedisStore(f"{server.url}?namespace=restart", socket_timeout=COMMAND_TIMEOUT,
                           connect_timeout=CONNECT_TIMEOUT, max_connections=4)
        await restart_under_load(store, lambda: server.stop(kill=kill), server.start, soak,
                                 persistent=False)


# ------------------------------------------------------------------ MongoDB (SecantusDB)


async def test_mongodb_restart_under_load(soak: int) -> None:
    """SecantusDB with its data on disk, stopped and started on the same port."""
    with PrivateSecantus() as server:
        store = MongoDBStore(f"{server.url}", namespace="restart",
                             connect_timeout=CONNECT_TIMEOUT,
                             client_options={"socketTimeoutMS": int(COMMAND_TIMEOUT * 1000)})
        await restart_under_load(store, server.stop, server.start, soak)
