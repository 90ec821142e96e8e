"""JSON Schema validation of versioned documents, and ``ValidatingStore``.

The schemas are the files in ``kvsessions/documents/schemas/`` (``{kind}.v{version}.json``, Draft
2020-12), loaded through ``importlib.resources`` so they ship inside the wheel, and compiled
once with jsonschema-rs (chosen by measurement: see ``scripts/benchmarks/validators.py``).
Validation never changes the document, and its errors stay short for huge documents.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import AsyncIterator, Iterable
from typing import Any

import jsonschema_rs
import orjson

from kvsessions.documents.codec import CURRENT_VERSIONS, decode_document, encode_document
from kvsessions.documents.keys import kind_of_key
from kvsessions.errors import UnsupportedVersionError, ValidationError
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.wrappers.base import StoreWrapper

__all__ = ["ValidatingStore", "load_schema", "schema_names", "validate_document"]


def schema_names() -> list[str]:
    """The schema files that ship with the package, e.g. ``session.v1.json``."""
    folder = importlib.resources.files("kvsessions.documents") / "schemas"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))


@functools.cache
def load_schema(kind: str, version: int) -> dict[str, Any]:
    path = importlib.resources.files("kvsessions.documents") / "schemas" / f"{kind}.v{version}.json"
    try:
        schema: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise UnsupportedVersionError(f"no schema for version {version}", kind=kind,
                                      path="v") from None
    return schema


@functools.cache
def _validator(kind: str, version: int) -> Any:
    # Formats on: the pattern says "UTC", the date-time format says "a real date" (no Feb 31).
    return jsonschema_rs.validator_for(load_schema(kind, version), validate_formats=True)


def validate_document(document: Any, *, key: str | None = None) -> None:
    """Raise ``ValidationError`` naming the key, the field path and the reason when
    ``document`` does not match the schema of its kind and version."""
    if type(document) is not dict:
        raise ValidationError(f"a document is a JSON object, not {type(document).__name__}",
                              key=key)
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in CURRENT_VERSIONS:
        raise ValidationError(f"unknown document kind {kind!r}; known: "
                              f"{', '.join(sorted(CURRENT_VERSIONS))}", key=key, path="kind")
    version = document.get("v")
    if type(version) is not int:
        raise ValidationError(f"version must be a whole number, not {version!r}", key=key,
                              path="v", kind=kind)
    if version > CURRENT_VERSIONS[kind]:
        raise UnsupportedVersionError(
            f"version {version} is newer than this release reads (newest: "
            f"{CURRENT_VERSIONS[kind]})", key=key, path="v", kind=kind)
    expected = kind_of_key(key) if key else None
    if expected is not None and kind != expected:
        raise ValidationError(f"a {kind!r} document under a {expected!r} key", key=key,
                              path="kind", kind=kind)
    try:
        validator = _validator(kind, version)
    except UnsupportedVersionError as exc:
        raise UnsupportedVersionError(exc.reason, key=key, path="v", kind=kind) from None
    if validator.is_valid(document):
        return
    error = next(iter(validator.iter_errors(document)))
    path = "/".join(str(part) for part in error.instance_path) or "/"
    if error.schema_path and error.schema_path[-1] in ("pattern", "format"):
        # The only patterns and formats in the schemas are the UTC timestamps; say so.
        shown = repr(error.instance)[:60]
        message = f"{shown} is not an ISO 8601 UTC timestamp like 2026-11-21T10:00:00Z"
    else:
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    raise ValidationError(message, key=key, path=path, kind=kind)


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
        if self.allow_unknown_kinds and (
            type(document) is not dict or document.get("kind") not in CURRENT_VERSIONS
        ):
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
        async for page in super()._scan(key_range, reverse, limit):
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
