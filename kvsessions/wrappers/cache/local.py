"""The local tier: this process's LRU copies, and the leases that keep a stale one out.

An in-process read or write holds a lease on its key while it is in flight; an invalidation
(from this process or from another one through pub/sub) marks the lease stale, and a stale
lease never fills the local tier. So a value read before a write, whose fill arrives after
the write's invalidation, is dropped.
"""

from __future__ import annotations

import time

from cachetools import LRUCache

__all__ = ["Lease", "LocalTier"]


class Lease:
    """Held by in-flight reads and writes of one key; an invalidation marks it stale."""

    __slots__ = ("holders", "stale")

    def __init__(self) -> None:
        self.holders = 0
        self.stale = False


class LocalTier:
    """An LRU of ``key -> (monotonic expiry, document)``. It serves only while the tier state
    says invalidations surely arrive (``serving``, set by the tier monitor)."""

    def __init__(self, maxsize: int, ttl: float, counts: dict[str, int]) -> None:
        self.enabled = maxsize > 0
        #: Whether reads may use it and fills may fill it: the tier state's verdict.
        self.serving = False
        self.entries: LRUCache[str, tuple[float, bytes]] = LRUCache(maxsize=max(1, maxsize))
        self._ttl = ttl
        self._leases: dict[str, Lease] = {}
        #: Deadlines of ttl writes, for the local-only mode (Redis keeps them otherwise).
        self.deadlines: dict[str, float] = {}
        self._counts = counts

    def __len__(self) -> int:
        return len(self.entries)

    def hit(self, key: str) -> bytes | None:
        """The live local copy of ``key``, counted as a hit, or None."""
        try:
            entry = self.entries[key]
        except KeyError:
            return None
        if entry[0] > time.monotonic():
            self._counts["local_hits"] += 1
            return entry[1]
        return None

    def hits(self, keys: list[str], results: list[bytes | None]) -> dict[str, list[int]]:
        """Fill ``results`` with local hits; the keys still wanted, with their positions."""
        wanted: dict[str, list[int]] = {}
        if not self.serving:
            for index, key in enumerate(keys):
                wanted.setdefault(key, []).append(index)
            return wanted
        now = time.monotonic()
        for index, key in enumerate(keys):
            entry = self.entries.get(key)
            if entry is not None and entry[0] > now:
                results[index] = entry[1]
                self._counts["local_hits"] += 1
            else:
                wanted.setdefault(key, []).append(index)
                self._counts["local_misses"] += 1
        return wanted

    # ------------------------------------------------------------------ leases

    def acquire(self, key: str) -> Lease:
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = Lease()
        lease.holders += 1
        return lease

    def release(self, key: str, lease: Lease) -> None:
        lease.holders -= 1
        if lease.holders == 0 and self._leases.get(key) is lease:
            del self._leases[key]

    def drop(self, key: str) -> None:
        """Forget ``key`` and stop every in-flight read or write from filling it."""
        self.entries.pop(key, None)
        lease = self._leases.pop(key, None)
        if lease is not None:
            lease.stale = True

    def clear(self) -> None:
        """Forget everything and void every lease."""
        self.entries.clear()
        for lease in self._leases.values():
            lease.stale = True
        self._leases.clear()

    # ------------------------------------------------------------------ filling

    def fill(self, key: str, lease: Lease, value: bytes, deadline: float | None) -> None:
        """After a read: keep ``value`` unless the lease went stale meanwhile."""
        if self.serving and not lease.stale:
            self.store(key, value, deadline)

    def store(self, key: str, value: bytes, deadline: float | None) -> None:
        life = self._ttl
        if deadline is not None:
            life = min(life, deadline - time.time())
            if life <= 0:
                return
        self.entries[key] = (time.monotonic() + life, value)
        self._counts["local_fills"] += 1

    def settle(self, key: str, lease: Lease, value: bytes | None, deadline: float | None,
               *, keep_deadline: bool) -> None:
        """After a successful write: keep the new value unless another write or an
        invalidation overlapped this one (then nobody can tell which value is the newer).
        ``keep_deadline``: this process keeps the key's deadline (no Redis to keep it)."""
        overlapped = lease.stale
        self.drop(key)
        if keep_deadline:
            if deadline is None:
                self.deadlines.pop(key, None)
            else:
                self._remember_deadline(key, deadline)
        if value is not None and not overlapped and self.serving:
            self.store(key, value, deadline)

    def _remember_deadline(self, key: str, deadline: float) -> None:
        self.deadlines[key] = deadline
        if len(self.deadlines) > 2 * self.entries.maxsize + 1000:
            now = time.time()
            self.deadlines = {k: d for k, d in self.deadlines.items() if d > now}
