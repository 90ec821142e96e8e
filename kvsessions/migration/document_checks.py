"""Optional upcasting and schema validation of documents on their way through a migration,
a validation or an upgrade. A document that fails is recorded and passed on unchanged: none of
these commands drops data on its own."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import orjson

from kvsessions.errors import KVSessionsError
from kvsessions.migration.batches import SAMPLE_LIMIT, Items

__all__ = ["DocumentCheck"]


class DocumentCheck:
    """Optional upcasting and schema validation of documents on their way through."""

    def __init__(self, *, validate: bool, upgrade: bool) -> None:
        self.validate = validate
        self.upgrade = upgrade
        self.invalid_count = 0
        self.invalid: list[dict[str, str]] = []
        self.upgraded = 0
        self.outdated = 0
        self._validate_document: Callable[..., None] | None = None
        self._upgrade_document: Callable[..., dict[str, Any]] | None = None
        self._current_versions: dict[str, int] = {}
        if validate:
            from kvsessions.documents.validation import validate_document

            self._validate_document = validate_document
        if upgrade:
            from kvsessions.documents.codec import upgrade_document

            self._upgrade_document = upgrade_document

    @property
    def active(self) -> bool:
        return self.validate or self.upgrade

    def _record(self, key: str, exc: Exception) -> None:
        """Count it; list the ``SAMPLE_LIMIT`` smallest keys (the first ones met by one
        stream in key order, and the same ones whatever order several streams meet them in)."""
        self.invalid_count += 1
        if len(self.invalid) >= SAMPLE_LIMIT and key >= self.invalid[-1]["key"]:
            return
        reason = str(exc) or type(exc).__name__
        bisect.insort(self.invalid, {"key": key, "error": reason[:300]},
                      key=lambda entry: entry["key"])
        del self.invalid[SAMPLE_LIMIT:]

    def process(self, items: Items) -> Items:
        """The items to write: upgraded where asked; invalid ones recorded, kept unchanged."""
        if not self.active:
            return items
        out: Items = []
        for key, value in items:
            try:
                document = orjson.loads(value)
                if self._upgrade_document is not None:
                    upgraded = self._upgrade_document(document, key=key)
                    if upgraded is not document and upgraded != document:
                        value = orjson.dumps(upgraded)
                        document = upgraded
                        self.upgraded += 1
                if self._validate_document is not None:
                    self._validate_document(document, key=key)
            except (KVSessionsError, orjson.JSONDecodeError, ValueError, KeyError,
                    TypeError) as exc:
                self._record(key, exc)
            out.append((key, value))
        return out

    def note_outdated(self, items: Items) -> None:
        """Count documents older than the newest version of their kind (for ``validate``)."""
        if not self._current_versions:
            from kvsessions.documents.codec import CURRENT_VERSIONS

            self._current_versions = dict(CURRENT_VERSIONS)
        for _, value in items:
            try:
                document = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            current = self._current_versions.get(document.get("kind"))
            version = document.get("v")
            if current is not None and isinstance(version, int) and version < current:
                self.outdated += 1

    def upgrade_for_compare(self, value: bytes, key: str) -> Any:
        document = orjson.loads(value)
        if self._upgrade_document is None:
            return document
        try:
            return self._upgrade_document(document, key=key)
        except (KVSessionsError, ValueError, KeyError, TypeError):
            return document
