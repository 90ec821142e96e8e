"""Which Redis keys a cache uses: a prefix that names the inner store, not only its namespace.

Two databases cached in one Redis under the same namespace name must not share entries, or
each serves the other's documents. So the default prefix is ``kvcache:{namespace}:{digest}:``
where the digest is a short hash of where the inner store keeps its data: the scheme, host,
port and database of its URL, or the real path of its file or folder, and its namespace
(never a user name or password, never an option such as a pool size). Every process that
caches one store must therefore name it the same way (``localhost`` and ``127.0.0.1`` are two
names), or all give the same explicit prefix: ``key_prefix=``, or ``prefix=`` in the cache URL
(``redis://host:6379/0?prefix=app:``, which ``open_store(url, cache_url=...)`` and
``STORAGE_CACHE_URL`` pass through).

A store that lives in this process (memory, SQLite ``:memory:``) gets a prefix of its own per
store object. A store whose location cannot be told (a driver client or pool handed in, an
adapter whose repr names no URL or path) needs an explicit prefix.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import weakref
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from kvsessions.errors import ConfigError
from kvsessions.kv.base import KVStore
from kvsessions.kv.memory import MemoryStore

__all__ = ["default_key_prefix", "split_prefix_option", "store_location"]

#: A quoted URL inside a repr, e.g. ``PostgreSQLStore('postgresql://u@h:5432/db?x=1', ...)``.
_QUOTED_URL = re.compile(r"'([A-Za-z][A-Za-z0-9+.-]*://[^']*)'")
#: Tokens of the stores that live in this process, one per store object.
_PROCESS_LOCAL: weakref.WeakKeyDictionary[KVStore, str] = weakref.WeakKeyDictionary()


def _innermost(store: KVStore) -> KVStore:
    """The adapter under any wrappers (validation, another cache, a test's gate)."""
    seen = 0
    while isinstance(inner := getattr(store, "inner", None), KVStore) and seen < 20:
        store, seen = inner, seen + 1
    return store


def _url_location(url: str) -> str:
    """scheme://host:port/database of a URL: no user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2].lower()  # every host of a multi-host URL
    except ValueError:
        return "?"
    return f"{parts.scheme.lower()}://{hosts}{parts.path.rstrip('/')}"


def store_location(store: KVStore) -> str | None:
    """Where ``store`` keeps its data, without secrets; None when it cannot be told."""
    store = _innermost(store)
    path = getattr(store, "path", None)
    if isinstance(store, MemoryStore) or path == ":memory:":
        token = _PROCESS_LOCAL.get(store)
        if token is None:
            token = _PROCESS_LOCAL[store] = secrets.token_hex(8)
        return f"process:{token}"
    for kind, where in (("sqlite", path), ("file", getattr(store, "root", None))):
        if isinstance(where, str | os.PathLike):
            return f"{kind}:{os.path.realpath(where)}"
    description = repr(store)
    urls = _QUOTED_URL.findall(description)
    if not urls:
        return None
    rest = _QUOTED_URL.sub("", description)
    return " ".join(_url_location(url) for url in urls) + " " + rest


def default_key_prefix(inner: KVStore) -> str:
    location = store_location(inner)
    if location is None:
        raise ConfigError(
            f"CachedStore cannot tell where {inner!r} keeps its data (a client or pool handed "
            "in?): give key_prefix=, or prefix= in the cache URL, the same in every process")
    digest = hashlib.sha256(f"{location}\x00{inner.namespace}".encode()).hexdigest()[:16]
    return f"kvcache:{inner.namespace}:{digest}:"


def split_prefix_option(redis_url: str) -> tuple[str, str | None]:
    """A cache URL without its ``prefix=`` option (which is ours, not the Redis client's),
    and that option's value."""
    try:
        parts = urlsplit(redis_url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return redis_url, None  # the Redis client reports it, scrubbed, on open()
    prefixes = [value for name, value in pairs if name == "prefix"]
    if not prefixes:
        return redis_url, None
    if len(prefixes) > 1 or not prefixes[0]:
        raise ConfigError("the cache URL's prefix= must be given once, not empty")
    query = urlencode([(n, v) for n, v in pairs if n != "prefix"], quote_via=quote)
    return urlunsplit(parts._replace(query=query)), prefixes[0]
