"""CachedStore: an in-process LRU tier and a Redis tier in front of any store.

Reads go local tier -> Redis tier -> inner store and fill the tiers on the way back. Writes go
to the inner store, which holds every value: the tiers only ever drop copies or hold copies of
what it returned, so the cache is never the only copy of anything, and an inner error is never
swallowed (a write that surely failed only removes its mark again).

Why it never serves a stale value (the rules the tests pin down):

* **Writes invalidate Redis, they do not write through.** Two writers of one key can reach the
  inner store in one order and Redis in the other; a write-through cache would then keep the
  loser's value. Every write instead marks the key as being written before the inner write,
  and replaces the key's cached entry with a *tombstone* after it, in one Lua script that also
  publishes the key on the cache's channel.
* **Fills are conditional.** A reader reads the key's Redis slot with one ``GET``: an entry is a
  hit; a tombstone or nothing is a miss, and what it saw is its snapshot. It then reads the
  inner store and fills Redis with a script that stores the value only if the slot still holds
  that snapshot and no write of the key is in flight (fills are batched and sent within a few
  milliseconds). So an older value can never be put back over a newer one or over an
  invalidation, nor win over a newer fill: the whole argument is in ``protocol.py``.
* **The local tier is guarded by leases** (``local.py``).
* **Expiry:** a ttl write also records the key's deadline in Redis (kept a while past it), so
  a fill from the inner store, in any process, caps the entry's lifetime by the ttl, and the
  entry carries it to the local tiers. A miss cannot know the deadline, so it fills Redis but
  not the local tier: the next read, a Redis hit, does that.
* **Outage:** see ``outage.py`` (the tier's named states and its recovery).

Without Redis (``redis_url=None, redis=None``) only the local tier is used: correct only when
this process is the only writer of the inner store.

It is built on ``StoreWrapper`` like ``ValidatingStore``, but calls the inner store's public
methods rather than its hooks: the inner store then checks, maps errors and names itself in
them exactly as it would without the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from kvsessions.errors import (
    ConfigError,
    EventLoopError,
    MissingDependencyError,
    StoreUnavailableError,
)
from kvsessions.kv.base import KVStore, closed_after, outlive_cancellation
from kvsessions.kv.loops import describe_loop
from kvsessions.urls import redact_url, url_secrets
from kvsessions.wrappers.base import StoreWrapper
from kvsessions.wrappers.cache.identity import default_key_prefix, split_prefix_option
from kvsessions.wrappers.cache.local import Lease, LocalTier
from kvsessions.wrappers.cache.outage import TierMonitor, TierState
from kvsessions.wrappers.cache.protocol import ENTRY, CacheKeys, Writer, deadline_arg, parse_entry
from kvsessions.wrappers.cache.redis_tier import TIER_ERRORS, RedisTier, have_redis

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["CachedStore"]

_COUNTERS = (
    "local_hits", "local_misses", "redis_hits", "redis_misses", "inner_reads", "local_fills",
    "redis_fills", "redis_fills_refused", "invalidations_sent", "invalidations_received",
    "redis_errors", "outages",
)


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"CachedStore {name} must be a finite number > 0, not {value!r}")
    return float(value)


class CachedStore(StoreWrapper):
    """A KV store that caches ``inner`` in this process and in Redis, coherently across
    processes. It owns ``inner`` (opens and closes it; ``close_inner=False`` leaves it open);
    a Redis client passed in as ``redis=`` is never closed."""

    def __init__(
        self,
        inner: KVStore,
        *,
        redis_url: str | None = None,
        redis: Redis | None = None,
        local_maxsize: int = 10_000,
        local_ttl: float = 60.0,
        redis_ttl: float = 3600.0,
        redis_timeout: float = 0.25,
        retry_interval: float = 1.0,
        key_prefix: str | None = None,
        close_inner: bool = True,
        max_missed: int = 100_000,
    ) -> None:
        if not isinstance(inner, KVStore):
            raise ConfigError(f"CachedStore wraps a KVStore, not {type(inner).__name__}")
        super().__init__(inner)
        if redis_url is not None and redis is not None:
            raise ConfigError("CachedStore takes redis_url or redis (a client), not both")
        if (redis_url is not None or redis is not None) and not have_redis():
            raise MissingDependencyError("redis", "redis", purpose="the Redis cache tier")
        if isinstance(local_maxsize, bool) or not isinstance(local_maxsize, int) \
                or local_maxsize < 0:
            raise ConfigError(f"local_maxsize must be a whole number >= 0, not {local_maxsize!r}")
        local_ttl = _positive("local_ttl", local_ttl)
        redis_ttl_ms = int(_positive("redis_ttl", redis_ttl) * 1000)
        timeout = _positive("redis_timeout", redis_timeout)
        self._retry_interval = _positive("retry_interval", retry_interval)
        self._close_inner = close_inner
        self._redis_url = redis_url
        self._secrets = inner._secrets
        if redis_url is not None:
            self._secrets = (*self._secrets, *url_secrets(redis_url))
        if redis is not None and redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigError("the Redis client for CachedStore must not use decode_responses")
        if key_prefix is not None and (not isinstance(key_prefix, str) or not key_prefix):
            raise ConfigError(f"key_prefix must be a non-empty str, not {key_prefix!r}")
        client_url = redis_url
        if redis_url is not None:
            client_url, url_prefix = split_prefix_option(redis_url)
            if url_prefix is not None:
                if key_prefix is not None and key_prefix != url_prefix:
                    raise ConfigError("CachedStore got key_prefix= and a different prefix= in "
                                      "the cache URL: give one")
                key_prefix = url_prefix
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._local = LocalTier(local_maxsize, local_ttl, self._counts)
        self._redis: RedisTier | None = None
        if redis_url is not None or redis is not None:
            prefix = key_prefix if key_prefix is not None else default_key_prefix(inner)
            self._redis = RedisTier(
                url=client_url, client=redis, keys=CacheKeys(prefix), writer=Writer(),
                timeout=timeout, entry_ttl_ms=redis_ttl_ms, counts=self._counts,
                on_error=self._tier_error)
        #: The event loop the tiers belong to (``_follow_loop``).
        self.loops_at_once = False
        self._home: asyncio.AbstractEventLoop | None = None
        self._home_guard = threading.Lock()
        self._tiers = TierMonitor(
            self._redis, self._local, self._counts, retry_interval=self._retry_interval,
            max_missed=max_missed, scrub=self._scrub, inner_repr=lambda: repr(self.inner),
            tier_name=redact_url(redis_url) if redis_url is not None else "(client)")

    def _tier_error(self, exc: BaseException) -> None:
        self._tiers.down(exc)

    def __repr__(self) -> str:
        if self._redis_url is not None:
            tier = redact_url(self._redis_url)
        else:
            tier = "client" if self._redis is not None else "none"
        return f"CachedStore({self.inner!r}, redis={tier!r})"

    @property
    def scan_batch_size(self) -> int:
        return self.inner.scan_batch_size

    @scan_batch_size.setter
    def scan_batch_size(self, size: int) -> None:
        self.inner.scan_batch_size = size

    @property
    def key_prefix(self) -> str | None:
        """What every Redis key of this cache starts with (None without a Redis tier)."""
        return self._redis.keys.prefix if self._redis is not None else None

    @property
    def state(self) -> TierState:
        """The Redis tier's state (``TierState``)."""
        return self._tiers.state

    def statistics(self) -> dict[str, Any]:
        """Hits and misses per tier, fills, invalidations, errors, and the tier's state."""
        return {
            **self._counts,
            "local_entries": len(self._local),
            "redis_configured": self._redis is not None,
            "redis_available": self._tiers.state is TierState.UP,
            "pending_invalidations": len(self._tiers.missed),
        }

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        if self._close_inner:
            await super().close()  # closes the inner store even if we were never opened
        else:
            await KVStore.close(self)

    async def _open(self) -> None:
        try:
            await self.inner.open()
            self._home = asyncio.get_running_loop()
            if self._redis is not None:
                self._redis.connect()
                await self._tiers.start(first_wait=self._redis.timeout * 6)
        except BaseException:
            # Failed or cancelled half way: close what was opened, or its connections and
            # threads (an SQLite store's) keep the process alive; nobody will close us.
            await self._undo_open()
            raise

    async def _ready(self) -> None:
        await super()._ready()
        if self._home is not asyncio.get_running_loop():
            await self._follow_loop()

    async def _follow_loop(self) -> None:
        """The tiers belong to the event loop that opened the cache (the local tier has no
        lock; the Redis tier's client, fills and watcher are that loop's). Once that loop has
        stopped (frameworks call ``asyncio.run`` again and again) the calling loop takes them
        over, making the Redis tier again; while it runs, another loop is refused."""
        here = asyncio.get_running_loop()
        with self._home_guard:
            home = self._home
            if home is here:
                return
            if home is not None and home.is_running():
                raise EventLoopError(
                    f"{self!r} is in use by {describe_loop(home)}, which still runs; it "
                    f"cannot serve {describe_loop(here)} too: use one CachedStore per "
                    "event loop")
            if self._redis is not None and not self._redis.owns_client:
                raise EventLoopError(
                    f"{self!r} was given a Redis client of {describe_loop(home or here)}; "
                    f"it cannot serve {describe_loop(here)}: pass redis_url instead")
            self._home = here
        if self._redis is not None:
            self._tiers.abandon()
            self._redis.abandon()
            self._redis.connect()
            await self._tiers.start(first_wait=self._redis.timeout * 6)

    async def _undo_open(self) -> None:
        await self._tiers.stop()
        self._tiers.reset()
        try:
            if self._redis is not None:
                await self._redis.close()
        finally:
            if self._close_inner:
                await self.inner.close()

    async def _close(self) -> None:
        if self._home is not None and self._home is not asyncio.get_running_loop():
            # Closed from another loop than the tiers': what is that loop's stays there.
            self._tiers.abandon()
            if self._redis is not None:
                self._redis.abandon()
        await self._tiers.stop()
        if self._redis is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._redis.timeout * 2):
                    await self._redis.drain()
        self._tiers.close()
        try:
            if self._redis is not None:
                await self._redis.close()
        finally:
            if self._close_inner:
                await self.inner.close()

    async def drain(self) -> None:
        """Send the pending Redis fills now and wait for them (for tests and shutdown)."""
        if self._redis is not None:
            await self._redis.drain()

    # ------------------------------------------------------------------ reads

    async def get(self, key: str) -> bytes | None:
        """A local hit skips the base class's checks: only valid keys are ever cached, and
        the local tier is off once the store is closed."""
        local = self._local
        if local.serving and type(key) is str:
            try:  # ``LocalTier.hit``, inlined: this is the path the local tier exists for
                entry = local.entries[key]
            except KeyError:
                pass
            else:
                if entry[0] > time.monotonic():
                    self._counts["local_hits"] += 1
                    return entry[1]
        return await super().get(key)

    async def _get(self, key: str) -> bytes | None:
        local = self._local
        if local.serving:  # ``get`` looked already
            self._counts["local_misses"] += 1
        lease = local.acquire(key)
        try:
            snapshot: bytes | None = None
            if self._tiers.state is TierState.UP:
                assert self._redis is not None
                try:
                    raw = await self._redis.get(key)
                except TIER_ERRORS as exc:
                    self._tiers.down(exc)
                else:
                    if raw is not None and raw.startswith(ENTRY):
                        cached, deadline = parse_entry(raw)
                        if deadline is None or deadline > time.time():
                            self._counts["redis_hits"] += 1
                            local.fill(key, lease, cached, deadline)
                            return cached
                    self._counts["redis_misses"] += 1
                    snapshot = raw or b""
                    local.drop(key)  # see "In one process" in protocol.py
            value = await self.inner.get(key)
            self._counts["inner_reads"] += 1
            if value is not None:
                self._filled_from_inner(key, lease, value, snapshot)
            return value
        finally:
            local.release(key, lease)

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        results: list[bytes | None] = [None] * len(keys)
        wanted = self._local.hits(keys, results)
        if not wanted:
            return results
        leases = {key: self._local.acquire(key) for key in wanted}
        try:
            missing = list(wanted)
            snapshots: dict[str, bytes] = {}
            if self._tiers.state is TierState.UP:
                missing, snapshots = await self._redis_get_many(missing, wanted, results, leases)
            if missing:
                values = await self.inner.get_many(missing)
                self._counts["inner_reads"] += len(missing)
                for key, value in zip(missing, values, strict=True):
                    if value is not None:
                        for index in wanted[key]:
                            results[index] = value
                        self._filled_from_inner(key, leases[key], value, snapshots.get(key))
            return results
        finally:
            for key, lease in leases.items():
                self._local.release(key, lease)

    async def _redis_get_many(
        self, keys: list[str], wanted: dict[str, list[int]], results: list[bytes | None],
        leases: dict[str, Lease],
    ) -> tuple[list[str], dict[str, bytes]]:
        """One MGET of the keys' slots; fills ``results`` with hits and returns the keys still
        missing with the snapshot of each."""
        assert self._redis is not None
        try:
            raws = await self._redis.get_many(keys)
        except TIER_ERRORS as exc:
            self._tiers.down(exc)
            return keys, {}
        missing: list[str] = []
        snapshots: dict[str, bytes] = {}
        now = time.time()
        for key, raw in zip(keys, raws, strict=True):
            if raw is not None and raw.startswith(ENTRY):
                value, deadline = parse_entry(raw)
                if deadline is None or deadline > now:
                    self._counts["redis_hits"] += 1
                    for index in wanted[key]:
                        results[index] = value
                    self._local.fill(key, leases[key], value, deadline)
                    continue
            self._counts["redis_misses"] += 1
            missing.append(key)
            snapshots[key] = raw or b""
            self._local.drop(key)
        return missing, snapshots

    def _filled_from_inner(self, key: str, lease: Lease, value: bytes,
                           snapshot: bytes | None) -> None:
        """After a miss read ``value`` from the inner store; ``snapshot`` is what the key's
        Redis slot held (None when the Redis tier was not asked: then only the local tier
        exists, and this process knows every deadline)."""
        if snapshot is None:
            deadline = None if self._redis is not None else self._local.deadlines.get(key)
            self._local.fill(key, lease, value, deadline)
        elif self._tiers.state is TierState.UP:
            assert self._redis is not None
            self._redis.queue_fill(key, snapshot, value)

    async def scan_pages(
        self,
        prefix: str = "",
        *,
        start_after: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Always the inner store's ordered scan (``scan`` too): the tiers hold single keys,
        not ranges."""
        await self._ready()
        async with closed_after(self.inner.scan_pages(prefix, start_after=start_after,
                                                      limit=limit, reverse=reverse)) as pages:
            async for page in pages:
                yield page

    # ------------------------------------------------------------------ writes

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        deadline = None if ttl is None else time.time() + ttl
        await self._write([(key, value)], deadline, self.inner.put(key, value, ttl=ttl))

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        deadline = None if ttl is None else time.time() + ttl
        return await outlive_cancellation(self._put_if_absent_then_invalidate(
            key, value, ttl, deadline))

    async def _put_if_absent_then_invalidate(self, key: str, value: bytes, ttl: float | None,
                                             deadline: float | None) -> bool:
        lease = self._local.acquire(key)
        try:
            # No mark first: an absent key has no value to bring back.
            stored = await self._inner_write(
                self.inner.put_if_absent(key, value, ttl=ttl), [key], deadline, "")
            if stored:
                await self._tiers.announce([(key, deadline_arg(deadline), "")])
                self._settle_local(key, lease, value, deadline)
            return bool(stored)
        finally:
            self._local.release(key, lease)

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        deadline = None if ttl is None else time.time() + ttl
        await self._write(items, deadline, self.inner.put_many(items, ttl=ttl))

    async def _delete(self, key: str) -> bool:
        result: bool = await self._write([(key, None)], None, self.inner.delete(key))
        return result

    async def _delete_many(self, keys: list[str]) -> int:
        result: int = await self._write([(key, None) for key in keys], None,
                                        self.inner.delete_many(keys))
        return result

    async def _compare_and_set(self, key: str, expected: bytes | None, new: bytes | None,
                               ttl: float | None) -> bool:
        """The inner store's compare-and-set, then the key invalidated in both tiers like a
        put or delete, whatever the outcome: a caller whose ``expected`` came from a stale
        cached copy gets False, and the next read must not hand it that copy again."""
        deadline = None if ttl is None or new is None else time.time() + ttl
        return await outlive_cancellation(self._compare_and_set_then_invalidate(
            key, expected, new, ttl, deadline))

    async def _compare_and_set_then_invalidate(self, key: str, expected: bytes | None,
                                               new: bytes | None, ttl: float | None,
                                               deadline: float | None) -> bool:
        lease = self._local.acquire(key)
        try:
            marks = await self._tiers.mark([key])
            swapped = bool(await self._inner_write(
                self._inner_compare_and_set(key, expected, new, ttl), [key], deadline, marks))
            await self._tiers.announce([(key, deadline_arg(deadline) if swapped else "?",
                                         marks)])
            if swapped:
                self._settle_local(key, lease, new, deadline)
            else:
                self._local.drop(key)
            return swapped
        finally:
            self._local.release(key, lease)

    @property
    def atomic_compare_and_set_with(self) -> bool:
        """False: the tiers are invalidated key by key, so the writes go one by one."""
        return False

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        return await KVStore._compare_and_set_with(self, key, expected, new, create, put,
                                                   delete, swap)

    async def _inner_compare_and_set(self, key: str, expected: bytes | None, new: bytes | None,
                                     ttl: float | None) -> bool:
        """The inner store's hook, its errors mapped as its public methods map them."""
        try:
            return await self.inner._compare_and_set(key, expected, new, ttl)
        except Exception as exc:
            error = self.inner._map_error(exc, "compare_and_set")
        raise error

    async def _write(self, items: Sequence[tuple[str, bytes | None]], deadline: float | None,
                     inner_write: Awaitable[Any]) -> Any:
        """Inner store first; then invalidate Redis and other processes, then this process.
        A cancelled caller waits for all of it: an inner write outlives its caller (see
        ``outlive_cancellation``), and stopping after it would leave the old value cached."""
        return await outlive_cancellation(self._write_then_invalidate(items, deadline,
                                                                      inner_write))

    async def _write_then_invalidate(self, items: Sequence[tuple[str, bytes | None]],
                                     deadline: float | None, inner_write: Awaitable[Any]) -> Any:
        keys = [key for key, _ in items]
        leases = [self._local.acquire(key) for key in keys]
        try:
            marks = await self._tiers.mark(keys)
            result = await self._inner_write(inner_write, keys, deadline, marks)
            arg = deadline_arg(deadline)
            await self._tiers.announce([(key, arg, marks) for key in keys])
            for (key, value), lease in zip(items, leases, strict=True):
                self._settle_local(key, lease, value, deadline)
            return result
        finally:
            for key, lease in zip(keys, leases, strict=True):
                self._local.release(key, lease)

    async def _inner_write(self, inner_write: Awaitable[Any], keys: list[str],
                           deadline: float | None, marks: str) -> Any:
        try:
            return await inner_write
        except StoreUnavailableError:
            # The write may or may not have landed: a cached copy could now be stale, and the
            # deadline may be the old one or the new one.
            for key in keys:
                self._local.drop(key)
            arg = deadline_arg(deadline, certain=False)
            await self._tiers.announce([(key, arg, marks) for key in keys])
            raise
        except Exception:
            await self._tiers.release(keys, marks)  # it did not land: nothing changed
            raise

    def _settle_local(self, key: str, lease: Lease, value: bytes | None,
                      deadline: float | None) -> None:
        self._local.settle(key, lease, value, deadline, keep_deadline=self._redis is None)
