"""Runs Google ADK's session-service contract tests against ``KVSessionService``.

Usage (a checkout of google/adk-python matching the installed version, outside this repo)::

    cp scripts/upstream_tests/adk_conftest.py CHECKOUT/tests/unittests/sessions/conftest.py
    cd CHECKOUT && KV_UPSTREAM_STORE=sqlite python -m pytest -q \\
        tests/unittests/sessions/test_session_service.py

(keep the checkout's own conftest.py by appending this file to it, if it has one).
``KV_UPSTREAM_STORE`` is sqlite, postgresql, redis or mongodb (then ``KV_UPSTREAM_MONGODB_URL``).
Every service ``get_session_service`` builds becomes a ``KVSessionService`` on a fresh
namespace. What runs: the tests that take the ``session_service`` fixture (the behaviour every
``BaseSessionService`` owes its callers), once (the fixture's other parameters would run the
same adapter again), and the two stale-writer tests; the tests of ``DatabaseSessionService``'s
and ``SqliteSessionService``'s SQL internals are deselected.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from kvsessions.integrations.adk import KVSessionService

STORE = os.environ.get("KV_UPSTREAM_STORE", "sqlite")
RUN = uuid.uuid4().hex[:8]
STALE_WRITER_TESTS = {"test_append_event_to_stale_session",
                      "test_append_event_concurrent_stale_sessions_reject_stale_writer"}


def url() -> str:
    namespace = f"adk_{RUN}_{uuid.uuid4().hex[:10]}"
    if STORE == "sqlite":
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "kv-upstream"
        folder.mkdir(exist_ok=True)
        return f"sqlite:///{folder / (namespace + '.db')}"
    bases = {"postgresql": "postgresql://postgres@127.0.0.1:5432/test",
             "redis": "redis://127.0.0.1:6379/0",
             "mongodb": os.environ.get("KV_UPSTREAM_MONGODB_URL", "")}
    return f"{bases[STORE]}?namespace={namespace}"


def adapter(*args: Any, **kwargs: Any) -> KVSessionService:
    return KVSessionService(url())


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    def contract(item: Any) -> bool:
        if getattr(item, "originalname", item.name) in STALE_WRITER_TESTS:
            return True
        callspec = getattr(item, "callspec", None)
        return ("session_service" in getattr(item, "fixturenames", ())
                and (callspec is None or getattr(
                    callspec.params.get("session_service"), "name", "IN_MEMORY") == "IN_MEMORY"))

    for item in items:  # at collection, so no fixture can call the original first
        if hasattr(item.module, "get_session_service"):
            item.module.get_session_service = adapter
    keep = [item for item in items if contract(item)]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep
