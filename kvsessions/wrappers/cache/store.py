"""CachedStore: an in-process LRU tier and a Redis tier in front of any store.

Reads go local tier -> Redis tier -> inner store and fill the tiers on the way back. Writes go
to the inner store first; only when it succeeded are the tiers touched, so the cache is never
the only copy of anything and an inner error is never swallowed.

Why it never serves a stale value (the rules the tests pin down):

* **Writes invalidate Redis, they do not write through.** Two writers of one key can reach the
  inner store in one order and Redis in the other; a write-through cache would then keep the
  loser's value. Every write instead replaces the key's cached entry with a *tombstone* that
  holds a token used only once, in one Lua script that also publishes the key on the
  namespace's channel.
* **Fills are conditional.** A reader reads the key's Redis slot with one ``GET``: an entry is a
  hit; a tombstone or nothing is a miss, and what it saw is its snapshot. It then reads the
  inner store and fills Redis with a script that stores the value only if the slot still holds
  that snapshot (fills are batched and sent within a few milliseconds). A fill that raced with a
  write (read the old value, write landed, fill arrives late) finds a new tombstone and is
  dropped, so an older value can never be put back over a newer one or over an invalidation.
* **The local tier is guarded by leases.** An in-process read or write holds a lease on its key;
  an invalidation (from this process or from another one through pub/sub) marks the lease
  stale, and a stale lease never fills the local tier.
* **Expiry:** a ttl write also records the key's deadline in Redis (kept a while past it), so
  a fill from the inner store, in any process, caps the entry's lifetime by the ttl, and the
  entry carries it to the local tiers. A miss cannot know the deadline, so it fills Redis but
  not the local tier: the next read, a Redis hit, does that.
* **Outage:** every Redis call has a bounded timeout. On the first failure the tier is marked
  down (one warning), the local tier is emptied and bypassed (invalidations may be missed),
  reads and writes go straight to the inner store, and the keys written meanwhile are
  remembered. A watcher task resubscribes; before the tier is used again those keys are
  invalidated in Redis and announced to the other processes, and the local tier is flushed.

Without Redis (``redis_url=None, redis=None``) only the local tier is used: correct only when
this process is the only writer of the inner store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any, cast

from cachetools import LRUCache

from kvsessions.errors import ConfigError, MissingDependencyError, StoreUnavailableError
from kvsessions.kv.base import KeyRange, KVStore, outlive_cancellation
from kvsessions.urls import redact_url, url_secrets

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

__all__ = ["CachedStore"]

logger = logging.getLogger("kvsessions.wrappers.cache")

#: What a Redis call can raise when the server is down, slow or gone away.
_TIER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
#: Entries per Lua script call, so one huge batch does not block Redis for long.
_CHUNK = 256
#: Seconds a Redis fill may wait for others to share its script call: at one Redis command
#: per miss instead of two, misses cost about what an inner get plus a SET cost. A key read
#: again meanwhile is still served by the local tier; other processes read the inner store.
_FILL_DELAY = 0.005
#: Tombstones live at least this long (ms), whatever ``redis_ttl``: a reader that stalls
#: between its read and its fill for longer could put back a value a write replaced.
_TOMBSTONE_MIN_LIFE_MS = 600_000

# KEYS: (slot key, deadline key) pairs. ARGV: channel, message, tombstone lifetime (ms), now
# (ms), tombstone, then per entry what the write did to the deadline: '' (no ttl), 'ms' (a ttl
# ending then), '?' (unknown: keep the record), '?ms' (unknown, but no later than ms). The
# deadline record outlives the deadline by the lifetime, so a late fill still sees it passed.
_INVALIDATE_LUA = """
local life = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
for i = 1, #KEYS / 2 do
  local deadline = ARGV[5 + i]
  redis.call('SET', KEYS[2 * i - 1], ARGV[5], 'PX', life)
  if deadline == '' then
    redis.call('DEL', KEYS[2 * i])
  elseif deadline ~= '?' then
    local ms = tonumber((string.gsub(deadline, '^%?', '')))
    if string.sub(deadline, 1, 1) == '?' then
      local recorded = tonumber(redis.call('GET', KEYS[2 * i]) or '')
      if recorded and recorded < ms then ms = recorded end
    end
    redis.call('SET', KEYS[2 * i], ms, 'PX', math.floor(math.max(ms - now, 0) + life))
  end
end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return #KEYS / 2
"""

# KEYS: (slot key, deadline key) pairs. ARGV: entry lifetime (ms), now (ms), then per entry
# the snapshot (what the reader found in the slot: '' or a tombstone) and the value it read.
_FILL_LUA = """
local life = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local filled = 0
for i = 1, #KEYS / 2 do
  local slot = redis.call('GET', KEYS[2 * i - 1]) or ''
  if slot == ARGV[2 * i + 1] then
    local keep = life
    local deadline = redis.call('GET', KEYS[2 * i]) or ''
    if deadline ~= '' then keep = math.min(keep, tonumber(deadline) - now) end
    if keep >= 1 then
      redis.call('SET', KEYS[2 * i - 1], 'E' .. deadline .. '|' .. ARGV[2 * i + 2],
                 'PX', math.floor(keep))
      filled = filled + 1
    end
  end
end
return filled
"""

_COUNTERS = (
    "local_hits", "local_misses", "redis_hits", "redis_misses", "inner_reads", "local_fills",
    "redis_fills", "redis_fills_refused", "invalidations_sent", "invalidations_received",
    "redis_errors", "outages",
)


class _Lease:
    """Held by in-flight reads and writes of one key; an invalidation marks it stale."""

    __slots__ = ("holders", "stale")

    def __init__(self) -> None:
        self.holders = 0
        self.stale = False


#: A key's slot in Redis holds an entry ``E[deadline_ms]|document`` or a tombstone
#: ``T<writer>.<number>`` (each written once); an empty slot is a miss too.
_ENTRY, _TOMBSTONE = b"E", b"T"


def _parse_entry(raw: bytes) -> tuple[bytes, float | None]:
    """An entry -> (document, deadline in s or None)."""
    header, _, document = raw.partition(b"|")
    return document, int(header[1:]) / 1000.0 if len(header) > 1 else None


def _deadline_arg(deadline: float | None, *, certain: bool = True) -> str:
    """How an invalidation updates the deadline record (see ``_INVALIDATE_LUA``)."""
    if deadline is None:
        return "" if certain else "?"
    return f"{'' if certain else '?'}{int(deadline * 1000)}"


def _bounded_within(client: Redis, seconds: float) -> bool:
    """Whether ``client``'s socket timeouts keep every call within ``seconds``."""
    options = client.connection_pool.connection_kwargs
    read, connect = options.get("socket_timeout"), options.get("socket_connect_timeout")
    return all(isinstance(limit, int | float) and 0 < limit <= seconds
               for limit in (read, connect or read))


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"CachedStore {name} must be a finite number > 0, not {value!r}")
    return float(value)


class CachedStore(KVStore):
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
        super().__init__(namespace=inner.namespace)
        if redis_url is not None and redis is not None:
            raise ConfigError("CachedStore takes redis_url or redis (a client), not both")
        if (redis_url is not None or redis is not None) and aioredis is None:
            raise MissingDependencyError("redis", "redis", purpose="the Redis cache tier")
        if isinstance(local_maxsize, bool) or not isinstance(local_maxsize, int) \
                or local_maxsize < 0:
            raise ConfigError(f"local_maxsize must be a whole number >= 0, not {local_maxsize!r}")
        self._inner = inner
        self._local_ttl = _positive("local_ttl", local_ttl)
        self._redis_ttl_ms = int(_positive("redis_ttl", redis_ttl) * 1000)
        self._timeout = _positive("redis_timeout", redis_timeout)
        self._retry_interval = _positive("retry_interval", retry_interval)
        self._close_inner = close_inner
        self._max_missed = max_missed
        self._redis_url = redis_url
        self._secrets = inner._secrets
        if redis_url is not None:
            self._secrets = (*self._secrets, *url_secrets(redis_url))
        if redis is not None and redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigError("the Redis client for CachedStore must not use decode_responses")
        self._client: Redis | None = redis
        self._owns_client = redis is None
        #: The client's own socket timeouts bound each call within ``redis_timeout``, so a
        #: single-key read needs no timer of ours (the hit path's largest cost after the GET).
        self._client_bounds_calls = False  # known once the client exists
        prefix = key_prefix if key_prefix is not None else f"kvcache:{self.namespace}:"
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"key_prefix must be a non-empty str, not {prefix!r}")
        self._value_prefix = (prefix + "v:").encode()
        self._deadline_prefix = (prefix + "d:").encode()
        self._channel = (prefix + "invalidate").encode()
        self._writer_id = secrets.token_hex(8).encode()
        self._tombstones = 0  # numbers this process's tombstones, so each is used once

        self._local_enabled = local_maxsize > 0
        self._local: LRUCache[str, tuple[float, bytes]] = LRUCache(maxsize=max(1, local_maxsize))
        self._leases: dict[str, _Lease] = {}
        #: Deadlines of ttl writes, for the local-only mode (Redis keeps them otherwise).
        self._deadlines: dict[str, float] = {}
        self._counts = dict.fromkeys(_COUNTERS, 0)
        # Tier state: the local tier is used only while invalidations surely arrive.
        self._tier_ok = False
        #: Invalidations can be sent (true a little before ``_tier_ok`` during a recovery).
        self._send_ok = False
        self._local_on = self._local_enabled and not self._redis_configured
        self._warned = False
        self._missed: dict[str, str] = {}  # key -> its ``_deadline_arg``
        self._missed_all = False
        self._fills: list[tuple[str, bytes, bytes]] = []
        self._fill_task: asyncio.Task[None] | None = None
        self._fill_timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._invalidate_script: Any = None
        self._fill_script: Any = None

    @property
    def _redis_configured(self) -> bool:
        return self._redis_url is not None or self._client is not None

    @property
    def inner(self) -> KVStore:
        """The store this one caches."""
        return self._inner

    def __repr__(self) -> str:
        if self._redis_url is not None:
            tier = redact_url(self._redis_url)
        else:
            tier = "client" if self._client is not None else "none"
        return f"CachedStore({self._inner!r}, redis={tier!r})"

    @property
    def scan_batch_size(self) -> int:
        return self._inner.scan_batch_size

    @scan_batch_size.setter
    def scan_batch_size(self, size: int) -> None:
        self._inner.scan_batch_size = size

    def statistics(self) -> dict[str, Any]:
        """Hits and misses per tier, fills, invalidations, errors, and the tier's state."""
        return {
            **self._counts,
            "local_entries": len(self._local),
            "redis_configured": self._redis_configured,
            "redis_available": self._tier_ok,
            "pending_invalidations": len(self._missed),
        }

    # ------------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        await self._inner.open()
        if not self._redis_configured:
            return
        if self._client is None:
            assert self._redis_url is not None
            self._client = aioredis.Redis.from_url(
                self._redis_url, socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout, retry=Retry(NoBackoff(), 0))
        # A client handed in may retry on its own; only ours is known not to.
        self._client_bounds_calls = self._owns_client and _bounded_within(self._client,
                                                                          self._timeout)
        self._invalidate_script = self._client.register_script(_INVALIDATE_LUA)
        self._fill_script = self._client.register_script(_FILL_LUA)
        first_attempt = asyncio.Event()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_tier(first_attempt))
        # Start with the tier if it answers; if not, go on without it (the watcher retries).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 6):
                await first_attempt.wait()

    async def _close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 2):
                await self.drain()
        if self._fill_task is not None:
            self._fill_task.cancel()
        self._fills.clear()
        self._tier_ok = self._send_ok = False
        self._local_on = False
        self._flush_local()
        try:
            if self._client is not None and self._owns_client:
                await self._client.aclose()
                self._client = None
        finally:
            if self._close_inner:
                await self._inner.close()

    async def drain(self) -> None:
        """Send the pending Redis fills now and wait for them (for tests and shutdown)."""
        self._start_fills()
        while self._fill_task is not None:
            await asyncio.shield(self._fill_task)
            self._start_fills()

    # ------------------------------------------------------------------ reads

    async def get(self, key: str) -> bytes | None:
        """A local hit skips the base class's checks: only valid keys are ever cached, and
        the local tier is off once the store is closed."""
        if self._local_on and type(key) is str:
            try:
                entry = self._local[key]
            except KeyError:
                pass
            else:
                if entry[0] > time.monotonic():
                    self._counts["local_hits"] += 1
                    return entry[1]
        return await super().get(key)

    async def _get(self, key: str) -> bytes | None:
        if self._local_on:  # ``get`` looked already
            self._counts["local_misses"] += 1
        lease = self._acquire(key)
        try:
            snapshot: bytes | None = None
            if self._tier_ok:
                assert self._client is not None
                name = self._value_prefix + key.encode()
                try:
                    if self._client_bounds_calls:
                        raw = cast(bytes | None, await self._client.get(name))
                    else:
                        async with asyncio.timeout(self._timeout):
                            raw = cast(bytes | None, await self._client.get(name))
                except _TIER_ERRORS as exc:
                    self._tier_down(exc)
                else:
                    if raw is not None and raw.startswith(_ENTRY):
                        cached, deadline = _parse_entry(raw)
                        if deadline is None or deadline > time.time():
                            self._counts["redis_hits"] += 1
                            self._fill_local(key, lease, cached, deadline)
                            return cached
                    self._counts["redis_misses"] += 1
                    snapshot = raw or b""
            value = await self._inner.get(key)
            self._counts["inner_reads"] += 1
            if value is not None:
                self._filled_from_inner(key, lease, value, snapshot)
            return value
        finally:
            self._release(key, lease)

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        results: list[bytes | None] = [None] * len(keys)
        wanted: dict[str, list[int]] = {}
        if self._local_on:
            now = time.monotonic()
            for index, key in enumerate(keys):
                entry = self._local.get(key)
                if entry is not None and entry[0] > now:
                    results[index] = entry[1]
                    self._counts["local_hits"] += 1
                else:
                    wanted.setdefault(key, []).append(index)
                    self._counts["local_misses"] += 1
        else:
            for index, key in enumerate(keys):
                wanted.setdefault(key, []).append(index)
        if not wanted:
            return results
        leases = {key: self._acquire(key) for key in wanted}
        try:
            missing = list(wanted)
            snapshots: dict[str, bytes] = {}
            if self._tier_ok:
                missing, snapshots = await self._redis_get_many(missing, wanted, results, leases)
            if missing:
                values = await self._inner.get_many(missing)
                self._counts["inner_reads"] += len(missing)
                for key, value in zip(missing, values, strict=True):
                    if value is not None:
                        for index in wanted[key]:
                            results[index] = value
                        self._filled_from_inner(key, leases[key], value, snapshots.get(key))
            return results
        finally:
            for key, lease in leases.items():
                self._release(key, lease)

    async def _redis_get_many(
        self, keys: list[str], wanted: dict[str, list[int]], results: list[bytes | None],
        leases: dict[str, _Lease],
    ) -> tuple[list[str], dict[str, bytes]]:
        """One MGET of the keys' slots; fills ``results`` with hits and returns the keys still
        missing with the snapshot of each."""
        assert self._client is not None
        names = [self._value_prefix + key.encode() for key in keys]
        try:
            async with asyncio.timeout(self._timeout * (1 + len(keys) / 1000)):
                raws = cast(list[bytes | None], await self._client.mget(names))
        except _TIER_ERRORS as exc:
            self._tier_down(exc)
            return keys, {}
        missing: list[str] = []
        snapshots: dict[str, bytes] = {}
        now = time.time()
        for key, raw in zip(keys, raws, strict=True):
            if raw is not None and raw.startswith(_ENTRY):
                value, deadline = _parse_entry(raw)
                if deadline is None or deadline > now:
                    self._counts["redis_hits"] += 1
                    for index in wanted[key]:
                        results[index] = value
                    self._fill_local(key, leases[key], value, deadline)
                    continue
            self._counts["redis_misses"] += 1
            missing.append(key)
            snapshots[key] = raw or b""
        return missing, snapshots

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
        async for page in self._inner.scan_pages(prefix, start_after=start_after, limit=limit,
                                                 reverse=reverse):
            yield page

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        return await self._inner._scan_page(key_range, reverse, limit)

    # ------------------------------------------------------------------ writes

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        deadline = None if ttl is None else time.time() + ttl
        await self._write([(key, value)], deadline, self._inner.put(key, value, ttl=ttl))

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        deadline = None if ttl is None else time.time() + ttl
        return await outlive_cancellation(self._put_if_absent_then_invalidate(
            key, value, ttl, deadline))

    async def _put_if_absent_then_invalidate(self, key: str, value: bytes, ttl: float | None,
                                             deadline: float | None) -> bool:
        lease = self._acquire(key)
        try:
            stored = await self._inner_write(
                self._inner.put_if_absent(key, value, ttl=ttl), [key], deadline)
            if stored:
                await self._invalidate([(key, _deadline_arg(deadline))])
                self._settle_local(key, lease, value, deadline)
            return bool(stored)
        finally:
            self._release(key, lease)

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        deadline = None if ttl is None else time.time() + ttl
        await self._write(items, deadline, self._inner.put_many(items, ttl=ttl))

    async def _delete(self, key: str) -> bool:
        result: bool = await self._write([(key, None)], None, self._inner.delete(key))
        return result

    async def _delete_many(self, keys: list[str]) -> int:
        result: int = await self._write([(key, None) for key in keys], None,
                                        self._inner.delete_many(keys))
        return result

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
        leases = [self._acquire(key) for key in keys]
        try:
            result = await self._inner_write(inner_write, keys, deadline)
            arg = _deadline_arg(deadline)
            await self._invalidate([(key, arg) for key in keys])
            for (key, value), lease in zip(items, leases, strict=True):
                self._settle_local(key, lease, value, deadline)
            return result
        finally:
            for key, lease in zip(keys, leases, strict=True):
                self._release(key, lease)

    async def _inner_write(self, inner_write: Awaitable[Any], keys: list[str],
                           deadline: float | None) -> Any:
        try:
            return await inner_write
        except StoreUnavailableError:
            # The write may or may not have landed: a cached copy could now be stale, and the
            # deadline may be the old one or the new one.
            for key in keys:
                self._drop_local(key)
            arg = _deadline_arg(deadline, certain=False)
            await self._invalidate([(key, arg) for key in keys])
            raise

    # ------------------------------------------------------------------ the local tier

    def _acquire(self, key: str) -> _Lease:
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
        lease.holders += 1
        return lease

    def _release(self, key: str, lease: _Lease) -> None:
        lease.holders -= 1
        if lease.holders == 0 and self._leases.get(key) is lease:
            del self._leases[key]

    def _drop_local(self, key: str) -> None:
        """Forget ``key`` locally and stop every in-flight read or write from filling it."""
        self._local.pop(key, None)
        lease = self._leases.pop(key, None)
        if lease is not None:
            lease.stale = True

    def _flush_local(self) -> None:
        self._local.clear()
        for lease in self._leases.values():
            lease.stale = True
        self._leases.clear()

    def _fill_local(self, key: str, lease: _Lease, value: bytes, deadline: float | None) -> None:
        if self._local_on and not lease.stale:
            self._store_local(key, value, deadline)

    def _store_local(self, key: str, value: bytes, deadline: float | None) -> None:
        life = self._local_ttl
        if deadline is not None:
            life = min(life, deadline - time.time())
            if life <= 0:
                return
        self._local[key] = (time.monotonic() + life, value)
        self._counts["local_fills"] += 1

    def _settle_local(self, key: str, lease: _Lease, value: bytes | None,
                      deadline: float | None) -> None:
        """After a successful write: keep the new value locally unless another write or an
        invalidation overlapped this one (then nobody can tell which value is the newer)."""
        overlapped = lease.stale
        self._drop_local(key)
        if not self._redis_configured:
            if deadline is None:
                self._deadlines.pop(key, None)
            else:
                self._remember_deadline(key, deadline)
        if value is not None and not overlapped and self._local_on:
            self._store_local(key, value, deadline)

    def _remember_deadline(self, key: str, deadline: float) -> None:
        self._deadlines[key] = deadline
        if len(self._deadlines) > 2 * self._local.maxsize + 1000:
            now = time.time()
            self._deadlines = {k: d for k, d in self._deadlines.items() if d > now}

    def _filled_from_inner(self, key: str, lease: _Lease, value: bytes,
                           snapshot: bytes | None) -> None:
        """After a miss read ``value`` from the inner store; ``snapshot`` is what the key's
        Redis slot held (None when the Redis tier was not asked: then only the local tier
        exists, and this process knows every deadline)."""
        if snapshot is None:
            deadline = None if self._redis_configured else self._deadlines.get(key)
            self._fill_local(key, lease, value, deadline)
        elif self._tier_ok:
            self._queue_fill(key, snapshot, value)

    # ------------------------------------------------------------------ the Redis tier

    def _queue_fill(self, key: str, snapshot: bytes, value: bytes) -> None:
        """Fill Redis in the background: the reader does not wait for it, and the misses of
        the next few milliseconds share one script call. The fill is conditional on the slot
        being unchanged, so a late fill is harmless."""
        self._fills.append((key, snapshot, value))
        if len(self._fills) >= _CHUNK:
            self._start_fills()
        elif self._fill_timer is None and self._fill_task is None:
            self._fill_timer = asyncio.get_running_loop().call_later(
                _FILL_DELAY, self._start_fills)

    def _start_fills(self) -> None:
        if self._fill_timer is not None:
            self._fill_timer.cancel()
            self._fill_timer = None
        if self._fills and self._fill_task is None:
            self._fill_task = asyncio.get_running_loop().create_task(self._send_fills())

    async def _send_fills(self) -> None:
        try:
            while self._fills and self._tier_ok:
                batch = self._fills[:_CHUNK]
                del self._fills[:_CHUNK]
                names: list[bytes] = []
                args: list[bytes | int] = [self._redis_ttl_ms, int(time.time() * 1000)]
                for key, snapshot, value in batch:
                    encoded = key.encode()
                    names += (self._value_prefix + encoded, self._deadline_prefix + encoded)
                    args += (snapshot, value)
                try:
                    async with asyncio.timeout(self._timeout * 2):
                        filled = int(await self._fill_script(keys=names, args=args))
                except _TIER_ERRORS as exc:
                    self._tier_down(exc)
                    break
                self._counts["redis_fills"] += filled
                self._counts["redis_fills_refused"] += len(batch) - filled
            self._fills.clear()
        finally:
            self._fill_task = None

    async def _invalidate(self, entries: list[tuple[str, str]]) -> None:
        """After an inner write: tombstone the Redis copies, tell the other processes.
        When Redis cannot be told now, the keys are remembered and told on recovery."""
        if not self._redis_configured:
            return
        if self._send_ok:
            try:
                await self._send_invalidations(entries)
                return
            except _TIER_ERRORS as exc:
                self._tier_down(exc)
        self._remember_missed(entries)

    async def _send_invalidations(self, entries: list[tuple[str, str]]) -> None:
        assert self._client is not None
        now_ms = int(time.time() * 1000)
        life = max(self._redis_ttl_ms, _TOMBSTONE_MIN_LIFE_MS)
        calls: list[tuple[list[bytes], list[bytes | int | str]]] = []
        for start in range(0, len(entries), _CHUNK):
            chunk = entries[start:start + _CHUNK]
            names: list[bytes] = []
            deadlines: list[bytes | int | str] = []
            encoded_keys: list[bytes] = []
            for key, deadline in chunk:
                encoded = key.encode()
                encoded_keys.append(encoded)
                names += (self._value_prefix + encoded, self._deadline_prefix + encoded)
                deadlines.append(deadline)
            message = self._writer_id + b"\x00" + b"\x00".join(encoded_keys)
            calls.append((names, [self._channel, message, life, now_ms, self._new_tombstone(),
                                  *deadlines]))
        async with asyncio.timeout(self._timeout * len(calls)):
            if len(calls) == 1:
                await self._invalidate_script(keys=calls[0][0], args=calls[0][1])
            else:
                pipe = self._client.pipeline(transaction=False)
                for names, args in calls:
                    await self._invalidate_script(keys=names, args=args, client=pipe)
                await pipe.execute()
        self._counts["invalidations_sent"] += len(entries)

    def _new_tombstone(self) -> bytes:
        self._tombstones += 1
        return b"%s%s.%x" % (_TOMBSTONE, self._writer_id, self._tombstones)

    def _remember_missed(self, entries: list[tuple[str, str]]) -> None:
        if self._missed_all:
            return
        for key, deadline in entries:
            self._missed[key] = deadline
        if len(self._missed) > self._max_missed:
            self._missed.clear()
            self._missed_all = True

    async def _forget_everything(self) -> None:
        """Too many writes went by unannounced: tombstone every cached value of this
        namespace, then tell every process to flush its local tier."""
        assert self._client is not None
        async with asyncio.timeout(self._timeout * 20):
            batch: list[tuple[str, str]] = []
            async for name in self._client.scan_iter(match=self._value_prefix + b"*", count=500):
                batch.append((name[len(self._value_prefix):].decode(), "?"))
                if len(batch) >= 1000:
                    await self._send_invalidations(batch)
                    batch = []
            if batch:
                await self._send_invalidations(batch)
            await self._client.publish(self._channel, self._writer_id + b"\x01")

    def _tier_down(self, exc: BaseException) -> None:
        self._counts["redis_errors"] += 1
        self._tier_ok = self._send_ok = False
        self._fills.clear()
        if self._local_on:
            self._local_on = False
        self._flush_local()
        if not self._warned:
            self._warned = True
            self._counts["outages"] += 1
            logger.warning(
                "Redis cache tier %s unavailable (%s: %s); reading and writing %r directly "
                "until it is back", self._tier_name(), type(exc).__name__,
                self._scrub(str(exc)) or "no detail", self._inner)

    def _tier_name(self) -> str:
        return redact_url(self._redis_url) if self._redis_url is not None else "(client)"

    async def _recover(self) -> None:
        """Announce what was missed, flush the local tier, then use the tier again."""
        assert self._client is not None
        async with asyncio.timeout(self._timeout):
            await self._client.ping()
        # From now on writes announce themselves; what was missed before is sent here.
        self._send_ok = True
        while self._missed or self._missed_all:
            if self._missed_all:
                self._missed_all = False
                self._missed.clear()
                await self._forget_everything()
                continue
            batch = list(self._missed.items())
            self._missed.clear()
            try:
                await self._send_invalidations(batch)
            except BaseException:
                for key, deadline in batch:
                    self._missed.setdefault(key, deadline)
                raise
        # No await from here on: nothing can slip between the flush and the switch.
        self._flush_local()
        self._tier_ok = True
        self._local_on = self._local_enabled
        if self._warned:
            self._warned = False
            logger.info("Redis cache tier %s is back; local tier flushed", self._tier_name())

    async def _watch_tier(self, first_attempt: asyncio.Event) -> None:
        """Keep the subscription to the namespace's channel, and bring the tier back."""
        assert self._client is not None
        while True:
            pubsub = self._client.pubsub()
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await pubsub.subscribe(self._channel)
                    while True:
                        message = await pubsub.get_message(timeout=self._timeout)
                        if message is None:
                            raise TimeoutError("no confirmation of the subscription")
                        if message["type"] == "subscribe":
                            break
                await self._recover()
                first_attempt.set()
                while self._tier_ok:
                    message = await pubsub.get_message(timeout=self._retry_interval)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._on_message(message["data"])
                    elif message["type"] == "subscribe":
                        # The client reconnected by itself: messages may have been lost.
                        self._flush_local()
            except Exception as exc:  # a down or slow server, or anything unexpected
                self._tier_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            first_attempt.set()
            await asyncio.sleep(self._retry_interval)

    def _on_message(self, data: bytes) -> None:
        writer = data[:len(self._writer_id)]
        if writer == self._writer_id:
            return
        body = data[len(self._writer_id):]
        self._counts["invalidations_received"] += 1
        if body[:1] == b"\x01":
            self._flush_local()
            return
        for key in body[1:].decode().split("\x00"):
            self._drop_local(key)
