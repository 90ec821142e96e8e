"""Runs the OpenAI Agents SDK's own session tests against ``OpenAIAgentsSession``.

Usage (a checkout of openai/openai-agents-python at the installed version, outside this repo)::

    cp scripts/upstream_tests/openai_agents_conftest.py CHECKOUT/tests/memory/conftest.py
    cd CHECKOUT && KV_UPSTREAM_STORE=sqlite python -m pytest -q -rs \\
        tests/memory/test_session.py tests/memory/test_session_limit.py

``KV_UPSTREAM_STORE`` is sqlite, postgresql, redis or mongodb (then ``KV_UPSTREAM_MONGODB_URL``).
Every ``SQLiteSession(session_id, db_path, ..., session_settings=)`` in those two modules becomes
an ``OpenAIAgentsSession`` on that store (one namespace per ``db_path``, so two sessions on one
path share a store as they share a file); tests that reach ``SQLiteSession``'s private
internals (its connections, tables, locks, the sqlite3 module) are skipped and listed.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from kvsessions.integrations.openai_agents import OpenAIAgentsSession

STORE = os.environ.get("KV_UPSTREAM_STORE", "sqlite")
RUN = uuid.uuid4().hex[:8]
PRIVATE = ("_connections", "_locked_connection", "_get_connection", "_await_mutation",
           "messages_table", "sessions_table", "sqlite3.", "_closed", "_quarantined", "._lock")
MODULES = ("test_session", "test_session_limit")


def url_for(db_path: Any) -> str:
    where = (f":memory:{uuid.uuid4().hex}" if str(db_path) == ":memory:"
             else str(Path(db_path).resolve()))
    namespace = f"oa_{RUN}_{hashlib.sha256(where.encode()).hexdigest()[:12]}"
    if STORE == "sqlite":
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "kv-upstream"
        folder.mkdir(exist_ok=True)
        return f"sqlite:///{folder / (namespace + '.db')}"
    bases = {"postgresql": "postgresql://postgres@127.0.0.1:5432/test",
             "redis": "redis://127.0.0.1:6379/0",
             "mongodb": os.environ.get("KV_UPSTREAM_MONGODB_URL", "")}
    return f"{bases[STORE]}?namespace={namespace}"


class AdapterSession(OpenAIAgentsSession):
    """``SQLiteSession``'s constructor over the adapter."""

    def __init__(self, session_id: str, db_path: Any = ":memory:", sessions_table: Any = None,
                 messages_table: Any = None, session_settings: Any = None) -> None:
        super().__init__(session_id, url_for(db_path), session_settings=session_settings)

    def close(self) -> None:  # type: ignore[override]  # SQLiteSession.close is synchronous
        """The store closes with the test process."""


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] not in MODULES:
            continue
        used = [name for name in PRIVATE if name in inspect.getsource(item.function)]
        if used:
            item.add_marker(pytest.mark.skip(reason="SQLiteSession internals: "
                                             + ", ".join(used)))


@pytest.fixture(autouse=True)
def _adapter(request: Any, monkeypatch: Any) -> None:
    module = request.node.module
    if module.__name__.rsplit(".", 1)[-1] in MODULES:
        monkeypatch.setattr(module, "SQLiteSession", AdapterSession)
