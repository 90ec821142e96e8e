"""The Redis tier's calls: reading slots, batched conditional fills, invalidations.

Every call is bounded by ``timeout`` and raises one of ``TIER_ERRORS`` when Redis is down,
slow or gone; what to do then is the tier monitor's business (``outage.py``), except for
fills, which run in the background and report their failure through ``on_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from kvsessions.wrappers.cache.protocol import (
    CHUNK,
    FILL_LUA,
    INVALIDATE_LUA,
    MARK_LUA,
    RELEASE_LUA,
    TOMBSTONE_MIN_LIFE_MS,
    CacheKeys,
    Writer,
)

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - exercised only without the redis extra
    aioredis = None  # type: ignore[assignment]
    RedisError = OSError  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["FILL_DELAY", "TIER_ERRORS", "RedisTier", "have_redis"]

#: What a Redis call can raise when the server is down, slow or gone away.
TIER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
#: Seconds a Redis fill may wait for others to share its script call: at one Redis command
#: per miss instead of two, misses cost about what an inner get plus a SET cost. A key read
#: again meanwhile is still served by the local tier; other processes read the inner store.
FILL_DELAY = 0.005


def have_redis() -> bool:
    return aioredis is not None


def _bounded_within(client: Redis, seconds: float) -> bool:
    """Whether ``client``'s socket timeouts keep every call within ``seconds``."""
    options = client.connection_pool.connection_kwargs
    read, connect = options.get("socket_timeout"), options.get("socket_connect_timeout")
    return all(isinstance(limit, int | float) and 0 < limit <= seconds
               for limit in (read, connect or read))


class RedisTier:
    """One cache's view of Redis: its key names, its client (made from ``url`` and owned, or
    handed in and never closed) and its queue of fills."""

    def __init__(self, *, url: str | None, client: Redis | None, keys: CacheKeys,
                 writer: Writer, timeout: float, entry_ttl_ms: int, counts: dict[str, int],
                 on_error: Callable[[BaseException], None]) -> None:
        self.url = url
        self.client = client
        self.owns_client = client is None
        self.keys = keys
        self.writer = writer
        self.timeout = timeout
        self._entry_ttl_ms = entry_ttl_ms
        self._counts = counts
        self._on_error = on_error
        #: The client's own socket timeouts bound each call within ``timeout``, so a
        #: single-key read needs no timer of ours (the hit path's largest cost after the GET).
        self._client_bounds_calls = False  # known once the client exists
        self._mark_script: Any = None
        self._invalidate_script: Any = None
        self._release_script: Any = None
        self._fill_script: Any = None
        self._fills: list[tuple[str, bytes, bytes]] = []
        self._fill_task: asyncio.Task[None] | None = None
        self._fill_timer: asyncio.TimerHandle | None = None

    def connect(self) -> Redis:
        """Make the client (no I/O yet) and register the scripts."""
        if self.client is None:
            assert self.url is not None
            self.client = aioredis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0))
        # A client handed in may retry on its own; only ours is known not to.
        self._client_bounds_calls = self.owns_client and _bounded_within(self.client,
                                                                          self.timeout)
        self._mark_script = self.client.register_script(MARK_LUA)
        self._invalidate_script = self.client.register_script(INVALIDATE_LUA)
        self._release_script = self.client.register_script(RELEASE_LUA)
        self._fill_script = self.client.register_script(FILL_LUA)
        return self.client

    def abandon(self) -> None:
        """Forget what belongs to an event loop that has ended: its client (when ours; its
        connections died with the loop), its fill task and timer, the queued fills."""
        self.discard_fills()
        self._fill_task = None
        self._fill_timer = None
        if self.owns_client:
            self.client = None

    async def close(self) -> None:
        self.discard_fills()
        if self._fill_task is not None:
            self._fill_task.cancel()
        if self.client is not None and self.owns_client:
            client, self.client = self.client, None
            # The sockets are closed by then; at worst the wait for the server to see it runs
            # out (the tier's short timeout, on a busy machine). A cache being shut down has
            # nothing left to lose: its closing does not fail the caller's.
            with contextlib.suppress(*TIER_ERRORS):
                await client.aclose()

    # ------------------------------------------------------------------ reads

    async def get(self, key: str) -> bytes | None:
        """The raw slot of ``key``."""
        assert self.client is not None
        name = self.keys.value_prefix + key.encode()
        if self._client_bounds_calls:
            return cast(bytes | None, await self.client.get(name))
        async with asyncio.timeout(self.timeout):
            return cast(bytes | None, await self.client.get(name))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The raw slots of ``keys``, in one MGET."""
        assert self.client is not None
        names = [self.keys.value_prefix + key.encode() for key in keys]
        async with asyncio.timeout(self.timeout * (1 + len(keys) / 1000)):
            return cast(list[bytes | None], await self.client.mget(names))

    async def ping(self) -> None:
        assert self.client is not None
        async with asyncio.timeout(self.timeout):
            await self.client.ping()

    def pubsub(self) -> PubSub:
        assert self.client is not None
        return self.client.pubsub()

    # ------------------------------------------------------------------ fills

    def queue_fill(self, key: str, snapshot: bytes, value: bytes) -> None:
        """Fill Redis in the background: the reader does not wait for it, and the misses of
        the next few milliseconds share one script call. The fill is conditional on the slot
        being unchanged, so a late fill is harmless."""
        self._fills.append((key, snapshot, value))
        if len(self._fills) >= CHUNK:
            self.start_fills()
        elif self._fill_timer is None and self._fill_task is None:
            self._fill_timer = asyncio.get_running_loop().call_later(
                FILL_DELAY, self.start_fills)

    def start_fills(self) -> None:
        if self._fill_timer is not None:
            self._fill_timer.cancel()
            self._fill_timer = None
        if self._fills and self._fill_task is None:
            self._fill_task = asyncio.get_running_loop().create_task(self._send_fills())

    def discard_fills(self) -> None:
        """Redis is gone or closing: the queued fills are not worth sending."""
        self._fills.clear()

    async def drain(self) -> None:
        """Send the pending fills now and wait for them."""
        self.start_fills()
        while self._fill_task is not None:
            await asyncio.shield(self._fill_task)
            self.start_fills()

    async def _send_fills(self) -> None:
        try:
            while self._fills:
                batch = self._fills[:CHUNK]
                del self._fills[:CHUNK]
                names: list[bytes] = []
                args: list[bytes | int] = [self._entry_ttl_ms, int(time.time() * 1000)]
                for key, snapshot, value in batch:
                    names += self.keys.all_three(key)
                    args += (snapshot, value)
                try:
                    async with asyncio.timeout(self.timeout * 2):
                        filled = int(await self._fill_script(keys=names, args=args))
                except TIER_ERRORS as exc:
                    self._on_error(exc)
                    break
                self._counts["redis_fills"] += filled
                self._counts["redis_fills_refused"] += len(batch) - filled
            self._fills.clear()
        finally:
            self._fill_task = None

    # ------------------------------------------------------------------ writes

    async def mark(self, keys: list[str], token: bytes) -> None:
        """Before an inner write: tombstone the keys' slots with ``token`` and add it to their
        pending writes, which refuse every fill until the write's invalidation removes it."""
        life = self._tombstone_life_ms()
        deadline = int(time.time() * 1000) + life
        calls: list[tuple[list[bytes], list[bytes | int | str]]] = []
        for start in range(0, len(keys), CHUNK):
            names: list[bytes] = []
            for key in keys[start:start + CHUNK]:
                names += (self.keys.slot(key), self.keys.pending(key))
            calls.append((names, [token, deadline, life]))
        await self._run(self._mark_script, calls)

    async def release(self, keys: list[str], marks: str) -> None:
        """A write that surely did not land: remove its marks, nothing else."""
        calls: list[tuple[list[bytes], list[bytes | int | str]]] = [
            ([self.keys.pending(key) for key in keys[start:start + CHUNK]], [marks])
            for start in range(0, len(keys), CHUNK)]
        await self._run(self._release_script, calls)

    async def invalidate(self, entries: list[tuple[str, str, str]]) -> None:
        """Tombstone the slots of ``entries`` (key, deadline argument, marks to remove) and
        publish the keys, in one script call per ``CHUNK`` keys, all in one round trip."""
        now_ms = int(time.time() * 1000)
        life = self._tombstone_life_ms()
        calls: list[tuple[list[bytes], list[bytes | int | str]]] = []
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start:start + CHUNK]
            names: list[bytes] = []
            per_entry: list[bytes | int | str] = []
            encoded_keys: list[bytes] = []
            for key, deadline, marks in chunk:
                names += self.keys.all_three(key)
                encoded_keys.append(key.encode())
                per_entry += (deadline, marks)
            message = self.writer.invalidation_message(encoded_keys)
            calls.append((names, [self.keys.channel, message, life, now_ms,
                                  self.writer.new_tombstone(), *per_entry]))
        await self._run(self._invalidate_script, calls)
        self._counts["invalidations_sent"] += len(entries)

    def _tombstone_life_ms(self) -> int:
        return max(self._entry_ttl_ms, TOMBSTONE_MIN_LIFE_MS)

    async def _run(self, script: Any,
                   calls: list[tuple[list[bytes], list[bytes | int | str]]]) -> None:
        """Script calls, one per chunk, in one round trip."""
        async with asyncio.timeout(self.timeout * len(calls)):
            if len(calls) == 1:
                await script(keys=calls[0][0], args=calls[0][1])
            else:
                assert self.client is not None
                pipe = self.client.pipeline(transaction=False)
                for names, args in calls:
                    await script(keys=names, args=args, client=pipe)
                await pipe.execute()

    async def invalidate_everything(self) -> None:
        """Tombstone every cached value of this prefix, then tell every process to flush its
        local tier: for when too many writes went by unannounced."""
        assert self.client is not None
        async with asyncio.timeout(self.timeout * 20):
            batch: list[tuple[str, str, str]] = []
            prefix = self.keys.value_prefix
            async for name in self.client.scan_iter(match=prefix + b"*", count=500):
                batch.append((name[len(prefix):].decode(), "?", ""))
                if len(batch) >= 1000:
                    await self.invalidate(batch)
                    batch = []
            if batch:
                await self.invalidate(batch)
            await self.client.publish(self.keys.channel, self.writer.flush_message())
