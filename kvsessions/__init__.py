"""kvsessions: chat sessions kept safe on the key-value store you already run.

Names are imported lazily, so ``import kvsessions`` stays cheap and a server driver is imported
only when its store is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvsessions.errors import (
    ConfigError,
    DocumentTooLargeError,
    EventLoopError,
    ExportFileError,
    InvalidKeyError,
    InvalidValueError,
    KVSessionsError,
    MessageNotFoundError,
    MissingDependencyError,
    RevisionConflictError,
    SessionNotFoundError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    UnsupportedFormatError,
    UnsupportedVersionError,
    ValidationError,
)

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # the KV layer
    "KVStore": "kvsessions.kv.base",
    "open_store": "kvsessions.kv.registry",
    "register_scheme": "kvsessions.kv.registry",
    "MemoryStore": "kvsessions.kv.memory",
    "FileStore": "kvsessions.kv.file",
    "SQLiteStore": "kvsessions.kv.sqlite",
    "PostgreSQLStore": "kvsessions.kv.postgresql",
    "MongoDBStore": "kvsessions.kv.mongodb",
    "RedisStore": "kvsessions.kv.redis",
    "TextHit": "kvsessions.kv.text_search",
    "TextIndex": "kvsessions.kv.text_search",
    # documents
    "ChatSession": "kvsessions.documents.models",
    "ChatMessage": "kvsessions.documents.models",
    "UploadedFileRecord": "kvsessions.documents.models",
    "ValidatingStore": "kvsessions.wrappers.validating",
    # sessions
    "SessionStorage": "kvsessions.sessions.storage",
    "MemorySessionStorage": "kvsessions.sessions.storage",
    "FileSessionStorage": "kvsessions.sessions.storage",
    "SQLiteSessionStorage": "kvsessions.sessions.storage",
    "PostgreSQLSessionStorage": "kvsessions.sessions.storage",
    "MongoDBSessionStorage": "kvsessions.sessions.storage",
    "RedisSessionStorage": "kvsessions.sessions.storage",
    "SessionManager": "kvsessions.sessions.manager",
    "State": "kvsessions.sessions.state",
    "StateScope": "kvsessions.sessions.state",
    "MessageHit": "kvsessions.sessions.search",
    "StorageConfig": "kvsessions.config",
    "create_storage": "kvsessions.config",
    "create_manager": "kvsessions.config",
    # caching
    "CachedStore": "kvsessions.wrappers.cache",
    # migration
    "migrate_storage": "kvsessions.migration.copy",
    "verify_migration": "kvsessions.migration.verify",
    "export_to_json": "kvsessions.migration.export",
    "import_from_json": "kvsessions.migration.export",
    "backup_storage": "kvsessions.migration.export",
}

# Written out, not computed from _LAZY, so that type checkers see every public name.
__all__ = [
    "CachedStore",
    "ChatMessage",
    "ChatSession",
    "ConfigError",
    "DocumentTooLargeError",
    "EventLoopError",
    "ExportFileError",
    "FileSessionStorage",
    "FileStore",
    "InvalidKeyError",
    "InvalidValueError",
    "KVSessionsError",
    "KVStore",
    "MemorySessionStorage",
    "MemoryStore",
    "MessageHit",
    "MessageNotFoundError",
    "MissingDependencyError",
    "MongoDBSessionStorage",
    "MongoDBStore",
    "PostgreSQLSessionStorage",
    "PostgreSQLStore",
    "RedisSessionStorage",
    "RedisStore",
    "RevisionConflictError",
    "SQLiteSessionStorage",
    "SQLiteStore",
    "SessionManager",
    "SessionNotFoundError",
    "SessionStorage",
    "State",
    "StateScope",
    "StorageConfig",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "TextHit",
    "TextIndex",
    "UnsupportedFormatError",
    "UnsupportedVersionError",
    "UploadedFileRecord",
    "ValidatingStore",
    "ValidationError",
    "backup_storage",
    "create_manager",
    "create_storage",
    "export_to_json",
    "import_from_json",
    "migrate_storage",
    "open_store",
    "register_scheme",
    "verify_migration",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvsessions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - static view of the lazy names
    from kvsessions.config import StorageConfig, create_manager, create_storage
    from kvsessions.documents.models import ChatMessage, ChatSession, UploadedFileRecord
    from kvsessions.kv.base import KVStore
    from kvsessions.kv.file import FileStore
    from kvsessions.kv.memory import MemoryStore
    from kvsessions.kv.mongodb import MongoDBStore
    from kvsessions.kv.postgresql import PostgreSQLStore
    from kvsessions.kv.redis import RedisStore
    from kvsessions.kv.registry import open_store, register_scheme
    from kvsessions.kv.sqlite import SQLiteStore
    from kvsessions.kv.text_search import TextHit, TextIndex
    from kvsessions.migration.copy import migrate_storage
    from kvsessions.migration.export import backup_storage, export_to_json, import_from_json
    from kvsessions.migration.verify import verify_migration
    from kvsessions.sessions.manager import SessionManager
    from kvsessions.sessions.search import MessageHit
    from kvsessions.sessions.state import State, StateScope
    from kvsessions.sessions.storage import (
        FileSessionStorage,
        MemorySessionStorage,
        MongoDBSessionStorage,
        PostgreSQLSessionStorage,
        RedisSessionStorage,
        SessionStorage,
        SQLiteSessionStorage,
    )
    from kvsessions.wrappers.cache import CachedStore
    from kvsessions.wrappers.validating import ValidatingStore
