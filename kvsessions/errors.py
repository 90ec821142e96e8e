"""The one exception tree of kvsessions.

Every error the library raises on purpose is a ``KVSessionsError``; driver exceptions are
mapped into this tree in one place (``KVStore._map_error``) and kept as ``__cause__``::

    KVSessionsError
    ├── ValidationError (ValueError)          a document or value is not acceptable
    │   ├── InvalidValueError                 not bytes holding one JSON object
    │   ├── DocumentTooLargeError             over the size or nesting limit
    │   └── UnsupportedVersionError           a document version this release cannot read
    ├── InvalidKeyError (ValueError)          a key, prefix or cursor that breaks the key rules
    ├── ConfigError (ValueError)              a URL, setting or namespace that is not allowed
    │   └── StoreNotFoundError                a store that must exist (file, table) is not there
    ├── UnsupportedFormatError (ValueError)   an export format that does not exist
    ├── ExportFileError (ValueError)          an export file that is not intact or not an export
    ├── SessionNotFoundError (LookupError)    an operation needs a session that is not stored
    ├── MessageNotFoundError (LookupError)    an operation needs a message that is not stored
    ├── RevisionConflictError                 a write asked for a revision that is no longer stored
    ├── MissingDependencyError (ImportError)  an optional driver is not installed
    ├── StoreUnavailableError (ConnectionError) the server cannot be reached or went away
    └── StoreError                            the store failed in another way
        └── EventLoopError                    used from an event loop it cannot serve

Messages never contain a password: URLs are passed through ``redact_url`` first.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "ConfigError",
    "DocumentTooLargeError",
    "EventLoopError",
    "ExportFileError",
    "InvalidKeyError",
    "InvalidValueError",
    "KVSessionsError",
    "MessageNotFoundError",
    "MissingDependencyError",
    "RevisionConflictError",
    "SessionNotFoundError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "UnsupportedFormatError",
    "UnsupportedVersionError",
    "ValidationError",
]


class KVSessionsError(Exception):
    """Root of every error kvsessions raises."""


class ValidationError(KVSessionsError, ValueError):
    """A document failed validation: which document (key), which field (path), why (reason)."""

    def __init__(
        self,
        reason: str,
        *,
        key: str | None = None,
        path: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.reason = reason
        self.key = key
        self.path = path
        self.kind = kind
        parts = []
        if key is not None:
            parts.append(f"document {key!r}")
        if kind is not None:
            parts.append(f"kind {kind!r}")
        if path is not None:
            parts.append(f"field {path!r}")
        where = ", ".join(parts)
        super().__init__(f"{where}: {reason}" if where else reason)

    def __reduce__(self) -> tuple[Any, ...]:
        state = (type(self), self.reason, self.key, self.path, self.kind)
        return (_rebuild_validation_error, state)


def _rebuild_validation_error(
    cls: type[ValidationError], reason: str, key: str | None, path: str | None, kind: str | None
) -> ValidationError:
    return cls(reason, key=key, path=path, kind=kind)


class InvalidValueError(ValidationError):
    """A value handed to a store is not UTF-8 bytes holding exactly one JSON object."""


class DocumentTooLargeError(ValidationError):
    """A document is larger or nested deeper than every store can keep."""


class UnsupportedVersionError(ValidationError):
    """A stored document has a version this release does not know how to read."""


class InvalidKeyError(KVSessionsError, ValueError):
    """A key, prefix or scan cursor that is not a non-empty string of at most 512 UTF-8 bytes
    without NUL."""


class ConfigError(KVSessionsError, ValueError):
    """A URL, option or setting that is malformed or not allowed; the message names it."""

    @classmethod
    def not_allowed(cls, origin: str, value: object, requirement: str) -> ConfigError:
        """The one wording for a setting whose value fails its check, wherever it is set."""
        return cls(f"{origin}={value!r:.80} is not allowed: use {requirement}")


class StoreNotFoundError(ConfigError):
    """A store opened as one that must exist (read-only commands, ``create_missing=False``)
    is not there: its file, folder, table or collection is missing. Nothing was created."""


class UnsupportedFormatError(KVSessionsError, ValueError):
    """An export format that does not exist."""


class ExportFileError(KVSessionsError, ValueError):
    """An export file that is not intact (changed, truncated, reordered) or not an export.
    ``line`` is the 1-based line where the problem was found, when there is one."""

    def __init__(self, path: str | os.PathLike[str], reason: str, *, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}: line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}; nothing was imported")


class SessionNotFoundError(KVSessionsError, LookupError):
    """An operation needs a session that is not in the store."""


class MessageNotFoundError(KVSessionsError, LookupError):
    """An operation needs a message that is not in its session."""


class RevisionConflictError(KVSessionsError):
    """A write given ``expected_revision`` found another revision stored (someone wrote in
    between): nothing was written. ``expected`` and ``actual`` are the two revisions."""

    def __init__(self, what: str, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what} is at revision {actual}, not the expected {expected}; "
                         "nothing was written (read it again and retry)")
        self.what = what

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.what, self.expected, self.actual)


class MissingDependencyError(KVSessionsError, ImportError):
    """An optional driver is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, *, purpose: str | None = None) -> None:
        self.package = package
        self.extra = extra
        what = purpose or f"the {extra} store"
        super().__init__(
            f"{what} needs the {package!r} package, which is not installed: "
            f"pip install 'kvsessions[{extra}]'",
            name=package,
        )


class StoreUnavailableError(KVSessionsError, ConnectionError):
    """The store cannot be reached (refused, timed out, went away). The URL is shown without
    its password."""


class StoreError(KVSessionsError):
    """The store failed in a way that is neither bad input nor unavailability."""


class EventLoopError(StoreError):
    """A store was called from an event loop it cannot serve (a client handed in belongs to
    another loop); the message names both loops."""
