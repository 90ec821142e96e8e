"""Choosing an adapter from a URL: a scheme registry with lazy imports, so a server driver is
imported only when its scheme is opened."""

from __future__ import annotations

import importlib
from typing import Any

from kvsessions.errors import ConfigError
from kvsessions.kv.base import KVStore
from kvsessions.urls import StoreURL, parse_store_url

__all__ = ["BUILT_IN", "known_schemes", "open_store", "register_scheme", "schemes_of"]

#: The stores kvsessions ships: backend name -> (the class, "module:Class", and the URL schemes
#: it takes, the usual one first). The one list of schemes: adapters and config read it here.
BUILT_IN: dict[str, tuple[str, tuple[str, ...]]] = {
    "sqlite": ("kvsessions.kv.sqlite:SQLiteStore", ("sqlite",)),
    "postgresql": ("kvsessions.kv.postgresql:PostgreSQLStore", ("postgresql", "postgres")),
    "mongodb": ("kvsessions.kv.mongodb:MongoDBStore", ("mongodb", "mongodb+srv")),
    "redis": ("kvsessions.kv.redis:RedisStore",
              ("redis", "rediss", "redis+cluster", "rediss+cluster")),
    "file": ("kvsessions.kv.file:FileStore", ("file",)),
    "memory": ("kvsessions.kv.memory:MemoryStore", ("memory",)),
}

_SCHEMES: dict[str, str] = {scheme: target for target, schemes in BUILT_IN.values()
                            for scheme in schemes}


def schemes_of(backend: str) -> tuple[str, ...]:
    """The URL schemes of a built-in backend (``"postgresql"`` -> postgresql, postgres)."""
    return BUILT_IN[backend][1]


def register_scheme(scheme: str, target: str) -> None:
    """Make ``open_store`` build ``target`` ("package.module:Class", a ``KVStore`` subclass with
    a ``from_url(StoreURL, **options)`` classmethod) for URLs of ``scheme``."""
    if ":" not in target:
        raise ConfigError(f"register_scheme target {target!r} must look like 'module:Class'")
    _SCHEMES[scheme.lower()] = target


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def _store_class(url: StoreURL) -> type[KVStore]:
    target = _SCHEMES.get(url.scheme)
    if target is None:
        raise ConfigError(
            f"unknown store scheme {url.scheme!r} in {url.redacted!r}; "
            f"known schemes: {', '.join(known_schemes())}"
        )
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)  # may raise MissingDependencyError
    cls: type[KVStore] = getattr(module, class_name)
    return cls


def open_store(url: str, *, cache_url: str | None = None, **options: Any) -> KVStore:
    """The store a URL names, not yet connected: use ``async with open_store(url) as store`` or
    ``await store.open()``. Keyword ``options`` (for example ``client=`` to hand in an existing
    driver client) go to the adapter; URL query parameters carry the rest. With ``cache_url``
    (a Redis URL) the store comes wrapped in a ``CachedStore`` that owns it."""
    parsed = parse_store_url(url)
    cls = _store_class(parsed)
    from_url = getattr(cls, "from_url", None)
    if from_url is None:
        raise ConfigError(f"{cls.__name__} cannot be built from a URL")
    store: KVStore = from_url(parsed, **options)
    if cache_url is not None:
        parse_store_url(cache_url)  # refused here, redacted, before the driver quotes it
        from kvsessions.wrappers.cache import (
            CachedStore,  # lazy: redis is imported only when asked for
        )

        return CachedStore(store, redis_url=cache_url)
    return store
