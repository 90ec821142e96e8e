"""``ValidatingStore``: a store wrapper that checks every document written (and, by default,
read) against the JSON Schema of its kind and version (``kvsessions.documents.validation``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson

from kvsessions.documents.codec import (
    CURRENT_VERSIONS,
    decode_document,
    encode_document,
)
from kvsessions.documents.validation import validate_document
from kvsessions.errors import ValidationError
from kvsessions.kv.base import KeyRange, KVStore, closed_after
from kvsessions.wrappers.base import StoreWrapper

__all__ = ["ValidatingStore"]


class ValidatingStore(StoreWrapper):
    """A store that validates every document written through it (and, by default, every
    document read) against its schema, so nothing invalid gets in or comes out silently.

    ``allow_unknown_kinds`` lets documents without a known ``kind`` through unchecked (for a
    store shared with other data); by default they are refused.
    """

    def __init__(
        self,
        inner: KVStore,
        *,
        allow_unknown_kinds: bool = False,
        validate_reads: bool = True,
    ) -> None:
        super().__init__(inner)
        self.allow_unknown_kinds = allow_unknown_kinds
        self.validate_reads = validate_reads

    def _check(self, key: str, document: Any) -> None:
        if self.allow_unknown_kinds and not _has_known_kind(document):
            return
        validate_document(document, key=key)

    def _check_bytes(self, key: str, value: bytes) -> None:
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"stored value is not valid JSON: {exc}", key=key) from None
        self._check(key, document)

    # writes ------------------------------------------------------------------------------

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        self._check_bytes(key, value)
        await self.inner._put(key, value, ttl)

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        self._check_bytes(key, value)
        return await self.inner._put_if_absent(key, value, ttl)

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        if new is not None:
            self._check_bytes(key, new)
        return await self.inner._compare_and_set(key, expected, new, ttl)

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        for key, value in items:
            self._check_bytes(key, value)
        await self.inner._put_many(items, ttl)

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        if new is not None:
            self._check_bytes(key, new)
        for other, value in (*create, *put):
            self._check_bytes(other, value)
        for other, _, after in swap:
            if after is not None:
                self._check_bytes(other, after)
        return await self.inner._compare_and_set_with(key, expected, new, create, put,
                                                      delete, swap)

    # reads -------------------------------------------------------------------------------

    async def _get(self, key: str) -> bytes | None:
        value = await self.inner._get(key)
        if value is not None and self.validate_reads:
            self._check_bytes(key, value)
        return value

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        values = await self.inner._get_many(keys)
        if self.validate_reads:
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    self._check_bytes(key, value)
        return values

    async def _scan(
        self, key_range: KeyRange, reverse: bool, limit: int | None = None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        async with closed_after(super()._scan(key_range, reverse, limit)) as pages:
            async for page in pages:
                if self.validate_reads:
                    for key, value in page:
                        self._check_bytes(key, value)
                yield page

    # documents ---------------------------------------------------------------------------
    # The typed layer works on dicts: one parse per read, one encode per write.

    async def get_document(self, key: str) -> dict[str, Any] | None:
        """The document under ``key`` at the newest version, validated; None if missing."""
        await self._ready()
        value = await self.inner.get(key)
        return None if value is None else self.decode(key, value)

    async def get_documents(self, keys: Iterable[str]) -> list[dict[str, Any] | None]:
        await self._ready()
        key_list = list(keys)
        values = await self.inner.get_many(key_list)
        return [None if v is None else self.decode(k, v)
                for k, v in zip(key_list, values, strict=True)]

    async def scan_documents(
        self,
        prefix: str = "",
        *,
        start_after: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        await self._ready()
        async for key, value in self.inner.scan(prefix, start_after=start_after, limit=limit,
                                                reverse=reverse):
            yield key, self.decode(key, value)

    def encode(self, key: str, document: dict[str, Any]) -> bytes:
        """Validate and encode a document for writing (the newest version only)."""
        self._check(key, document)
        return encode_document(document, key=key)

    async def put_document(
        self, key: str, document: dict[str, Any], *, ttl: float | None = None
    ) -> None:
        await self._ready()
        await self.inner.put(key, self.encode(key, document), ttl=ttl)

    async def put_documents(
        self, items: Iterable[tuple[str, dict[str, Any]]], *, ttl: float | None = None
    ) -> None:
        await self._ready()
        await self.inner.put_many([(k, self.encode(k, d)) for k, d in items], ttl=ttl)

    def decode(self, key: str, value: bytes) -> dict[str, Any]:
        """A stored value as a document of the newest version, validated (on reads)."""
        document = decode_document(value, key=key)
        if self.validate_reads:
            validate_document(document, key=key)
        return document


def _has_known_kind(document: Any) -> bool:
    """Whether ``document`` claims a kind this release has schemas for (a ``kind`` of any JSON
    type may come from another program sharing the store)."""
    if type(document) is not dict:
        return False
    kind = document.get("kind")
    return isinstance(kind, str) and kind in CURRENT_VERSIONS
