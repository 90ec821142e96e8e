"""A store that wraps another store and is itself a store (validation, caching, ...).

It forwards the private hooks to the inner store, so the inner adapter's efficient batch and
scan hooks stay in use and every check and error mapping still happens once, in the wrapper's
public methods, with the inner adapter's error classification.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from kvsessions.errors import KVSessionsError
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.kv.text_search import Accept, TextHit, TextIndex

__all__ = ["StoreWrapper"]


class StoreWrapper(KVStore):
    """Forwards everything to ``inner``; subclasses override the hooks they change. Closing the
    wrapper closes the inner store, which the wrapper was given to own."""

    def __init__(self, inner: KVStore) -> None:
        super().__init__(namespace=inner.namespace)
        self.inner = inner
        self.scan_batch_size = inner.scan_batch_size
        self.loops_at_once = inner.loops_at_once
        self.text_search = inner.text_search

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    async def close(self) -> None:
        """Close the inner store too when this wrapper was never opened itself (a caller that
        used the inner store through it lazily), so no connection or thread outlives us."""
        await super().close()
        await self.inner.close()

    async def upgrade_layout(self) -> int:
        await self._ready()
        return await self.inner.upgrade_layout()

    async def _open(self) -> None:
        await self.inner.open()
        self._secrets = self.inner._secrets

    async def _close(self) -> None:
        await self.inner.close()

    async def _ready(self) -> None:
        await super()._ready()
        await self.inner._ready()  # the hooks below need its clients for the calling loop

    async def _get(self, key: str) -> bytes | None:
        return await self.inner._get(key)

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        await self.inner._put(key, value, ttl)

    async def _delete(self, key: str) -> bool:
        return await self.inner._delete(key)

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        return await self.inner._put_if_absent(key, value, ttl)

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        return await self.inner._compare_and_set(key, expected, new, ttl)

    @property
    def atomic_compare_and_set_with(self) -> bool:
        return self.inner.atomic_compare_and_set_with

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        return await self.inner._compare_and_set_with(key, expected, new, create, put,
                                                      delete, swap)

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self.inner._get_many(keys)

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        await self.inner._put_many(items, ttl)

    async def _delete_many(self, keys: list[str]) -> int:
        return await self.inner._delete_many(keys)

    def _scan(
        self, key_range: KeyRange, reverse: bool, limit: int | None = None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        self.inner.scan_batch_size = self.scan_batch_size
        return self.inner._scan(key_range, reverse, limit)

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        return await self.inner._scan_page(key_range, reverse, limit)

    async def _search_text(self, index: TextIndex, terms: list[str], within: str, limit: int,
                           accept: Accept | None) -> list[TextHit]:
        return await self.inner._search_text(index, terms, within, limit, accept)

    def _classify_error(self, exc: Exception) -> type[KVSessionsError] | None:
        return self.inner._classify_error(exc)
