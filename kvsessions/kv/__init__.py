"""The key-value layer: the contract (``base``), the scheme registry and one module per adapter."""

from kvsessions.kv.base import DEFAULT_NAMESPACE, KeyRange, KVStore
from kvsessions.kv.registry import known_schemes, open_store, register_scheme

__all__ = ["DEFAULT_NAMESPACE", "KVStore", "KeyRange", "known_schemes", "open_store",
           "register_scheme"]
