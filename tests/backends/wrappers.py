"""Wrappers are stores too: ValidatingStore runs the whole contract around other stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.registry import open_store
from kvsessions.testing import StoreFactory
from kvsessions.wrappers.validating import ValidatingStore


def url_quote(namespace: str) -> str:
    """Hostile namespaces must reach the store intact to be refused there."""
    return quote(namespace, safe="", errors="surrogatepass")


def validating_memory(request: Any, tmp_path: Path) -> StoreFactory:
    # The contract's documents have no "kind": let them through, check everything else.
    return StoreFactory(
        lambda ns: ValidatingStore(MemoryStore(namespace=ns), allow_unknown_kinds=True),
        persistent=False)


def validating_sqlite(request: Any, tmp_path: Path) -> StoreFactory:
    return StoreFactory(
        lambda ns: ValidatingStore(
            open_store(f"sqlite:///{tmp_path}/validating.db?namespace={url_quote(ns)}"),
            allow_unknown_kinds=True))


BACKENDS = {"validating_memory": validating_memory, "validating_sqlite": validating_sqlite}
