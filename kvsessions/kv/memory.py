"""An in-process store: a dict and a sorted key list. For tests, demos and embedding.

Each operation runs without an await under a ``threading.Lock``: atomic for the tasks of one
event loop, and for event loops in other threads too.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any

from kvsessions.kv.base import KeyRange, KVStore, expires_at
from kvsessions.kv.options import SHARED, batch_size_option, not_allowed, read_options
from kvsessions.urls import StoreURL

__all__ = ["MemoryStore"]


class MemoryStore(KVStore):
    """Keeps everything in this process; nothing survives ``close()``."""

    declared_options = (*SHARED, batch_size_option(KVStore.scan_batch_size))

    def __init__(self, *, namespace: str | None = None, durability: str | None = None,
                 batch_size: int | None = None) -> None:
        settings = read_options(self.declared_options, {
            "namespace": namespace, "durability": durability, "batch_size": batch_size})
        if settings["durability"] == "strict":
            raise not_allowed("durability", "strict", "normal (memory:// keeps nothing after "
                              "close(), so no write is durable)")
        super().__init__(namespace=settings["namespace"])
        self.scan_batch_size = settings["batch_size"]
        self._values: dict[str, tuple[bytes, float | None]] = {}
        self._sorted_keys: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: StoreURL, **given: Any) -> MemoryStore:
        return cls(**read_options(cls.declared_options, given, url))

    def __repr__(self) -> str:
        return f"MemoryStore(namespace={self.namespace!r})"

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        with self._lock:
            self._values.clear()
            self._sorted_keys.clear()

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if deadline is not None and deadline <= now:
            self._remove(key)
            return None
        return value

    def _remove(self, key: str) -> None:
        del self._values[key]
        index = bisect.bisect_left(self._sorted_keys, key)
        del self._sorted_keys[index]

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        if key not in self._values:
            bisect.insort(self._sorted_keys, key)
        self._values[key] = (value, expires_at(ttl))

    async def _get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key, time.time())

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        with self._lock:
            self._set(key, value, ttl)

    async def _delete(self, key: str) -> bool:
        with self._lock:
            if self._live(key, time.time()) is None:
                return False
            self._remove(key)
            return True

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        with self._lock:
            if self._live(key, time.time()) is not None:
                return False
            self._set(key, value, ttl)
            return True

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        with self._lock:
            current = self._live(key, time.time())
            if current != expected:
                return False
            if new is not None:
                self._set(key, new, ttl)
            elif current is not None:
                self._remove(key)
            return True

    _atomic_compare_and_set_with = True

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        # Under the lock that every method takes: atomic for every loop and thread.
        with self._lock:
            now = time.time()
            if any(self._live(other, now) is not None for other, _ in create):
                return False
            if any(self._live(other, now) != read for other, read, _ in swap):
                return False
            current = self._live(key, now)
            if current != expected:
                return False
            if new is not None:
                self._set(key, new, None)
            elif current is not None:
                self._remove(key)
            for other, value in (*create, *put):
                self._set(other, value, None)
            for other in delete:
                if self._live(other, now) is not None:
                    self._remove(other)
            for other, _, after in swap:
                if after is None:
                    self._remove(other)
                else:
                    self._set(other, after, None)
            return True

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        with self._lock:
            return self._page_of(key_range, reverse, limit)

    def _page_of(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        keys = self._sorted_keys
        if key_range.lower_inclusive:
            start = bisect.bisect_left(keys, key_range.lower)
        else:
            start = bisect.bisect_right(keys, key_range.lower)
        stop = len(keys) if key_range.upper is None else bisect.bisect_left(keys, key_range.upper)
        window = keys[stop - limit if stop - limit > start else start:stop][::-1] if reverse \
            else keys[start:min(stop, start + limit)]
        now = time.time()
        items: list[tuple[str, bytes]] = []
        for key in window:
            value, deadline = self._values[key]
            if deadline is None or deadline > now:
                items.append((key, value))
        last = window[-1] if len(window) == limit else None
        return items, last
