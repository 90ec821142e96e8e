"""The usage examples of seed 003 (shared/seeds/003_*.txt), run as written.

Adapted only where they cannot run as printed: the import line (``storage`` is ``kvsessions``)
and, for server examples, the connection string (the test servers, with a namespace of their
own). The examples use top-level ``await``; they are compiled with
``PyCF_ALLOW_TOP_LEVEL_AWAIT``, as the asyncio REPL does. The manager example uses ``Path``
without importing it; it is provided as the seed's surrounding code would.
"""

from __future__ import annotations

import ast
import inspect
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest

from kvsessions.documents.models import ChatSession
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.mongo_server import mongodb_url

SQLITE_EXAMPLE = '''
from kvsessions import SQLiteSessionStorage, ChatSession

# Initialize storage
storage = SQLiteSessionStorage("sessions.db")
await storage.initialize()

# Create session
session = ChatSession.create("gemini-2.5-flash")
session.add_message("user", "Hello!")
session.add_message("assistant", "Hi there!")

# Save session
await storage.save_session(session)

# Load session
loaded = await storage.load_session(session.session_id)

# List sessions
active_sessions = await storage.list_sessions(status="active")

# Delete session
await storage.delete_session(session.session_id)

# Cleanup
await storage.close()
'''

MANAGER_EXAMPLE = '''
from kvsessions import SQLiteSessionStorage, SessionManager

# Create storage and manager
storage = SQLiteSessionStorage("sessions.db")
await storage.initialize()

manager = SessionManager(
    storage,
    auto_save_enabled=True,
    expiry_hours=72
)

# Load sessions on startup
stats = await manager.startup()
print(f"Loaded {stats['active_sessions']} sessions")

# Create new session
session = await manager.create_session("gemini-2.5-flash")

# Add message (auto-saved)
session.add_message("user", "Hello!")
await manager.auto_save(session)

# Export session
json_export = await manager.export_session(
    session.session_id,
    format="json"
)

# Export to file
await manager.export_to_file(
    session.session_id,
    Path("export.md"),
    format="markdown"
)

# Get statistics
stats = await manager.get_statistics()

# Cleanup expired sessions
expired = await manager.cleanup_expired_sessions()

# Shutdown (saves all cached sessions)
await manager.shutdown()
'''

POSTGRESQL_EXAMPLE = '''
from kvsessions import PostgreSQLSessionStorage

storage = PostgreSQLSessionStorage(
    "postgresql://user:pass@localhost/gemini_mcp",
    min_pool_size=5,
    max_pool_size=20
)

await storage.initialize()

# Use same API as SQLite
await storage.save_session(session)
loaded = await storage.load_session(session_id)
'''

MONGODB_EXAMPLE = '''
from kvsessions import MongoDBSessionStorage

storage = MongoDBSessionStorage(
    "mongodb://localhost:27017",
    database_name="gemini_mcp"
)

await storage.initialize()

# Use same API as SQLite
await storage.save_session(session)
loaded = await storage.load_session(session_id)
'''

CONFIG_EXAMPLE = '''
from kvsessions.config import StorageConfig, create_storage

# Create config
config = StorageConfig(
    backend="postgresql",
    connection_string="postgresql://localhost/gemini",
    min_pool_size=5,
    max_pool_size=20,
    auto_save=True,
    expiry_hours=72
)

# Create storage from config
storage = create_storage(config)
await storage.initialize()
'''


async def run_example(code: str, **names: Any) -> dict[str, Any]:
    """Run ``code`` (with top-level await) and return its global names."""
    namespace: dict[str, Any] = {"__name__": "seed_example", **names}
    compiled = compile(code, "<seed example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if inspect.iscoroutine(result):
        await result
    return namespace


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def namespace() -> str:
    return "t_seed_" + uuid.uuid4().hex[:12]


@pytest.fixture
async def postgres_namespace(namespace: str) -> AsyncIterator[str]:
    yield namespace
    await drop_tables(POSTGRES_URL, {namespace})


def test_server_examples_are_the_seed_text() -> None:
    """Guard the adaptation: only the URL literals are replaced below."""
    assert '"postgresql://user:pass@localhost/gemini_mcp"' in POSTGRESQL_EXAMPLE
    assert '"mongodb://localhost:27017"' in MONGODB_EXAMPLE
    assert '"postgresql://localhost/gemini"' in CONFIG_EXAMPLE


async def test_sqlite_example(in_tmp: Path) -> None:
    names = await run_example(SQLITE_EXAMPLE)
    session, loaded = names["session"], names["loaded"]
    assert loaded == session
    assert [m.content for m in loaded.messages] == ["Hello!", "Hi there!"]
    assert [s.session_id for s in names["active_sessions"]] == [session.session_id]
    assert (in_tmp / "sessions.db").exists()


async def test_manager_example(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = await run_example(MANAGER_EXAMPLE, Path=Path)
    try:
        assert capsys.readouterr().out == "Loaded 0 sessions\n"
        session = names["session"]
        assert '"content": "Hello!"' in names["json_export"]
        markdown = (in_tmp / "export.md").read_text(encoding="utf-8")
        assert markdown.startswith(f"# Chat Session: {session.session_id}\n")
        assert "### 👤 User (" in markdown
        assert names["stats"]["total_sessions"] == 1
        assert names["expired"] == 0
        reloaded = await names["storage"].load_session(session.session_id)
        assert [m.content for m in reloaded.messages] == ["Hello!"]
        # a second start finds the session again
        again = await run_example(MANAGER_EXAMPLE, Path=Path)
        await again["storage"].close()
        assert capsys.readouterr().out == "Loaded 1 sessions\n"
    finally:
        await names["storage"].close()


async def test_postgresql_example(postgres_namespace: str) -> None:
    session = ChatSession.create("gemini-2.5-flash")
    session.add_message("user", "Hello!")
    code = POSTGRESQL_EXAMPLE.replace(
        "postgresql://user:pass@localhost/gemini_mcp",
        f"{POSTGRES_URL}?namespace={postgres_namespace}")
    names = await run_example(code, session=session, session_id=session.session_id)
    try:
        assert names["loaded"] == session
    finally:
        await names["storage"].close()


async def test_mongodb_example(namespace: str) -> None:
    session = ChatSession.create("gemini-2.5-flash")
    session.add_message("assistant", "Hi there!")
    parts = urlsplit(mongodb_url())  # the server only: the example names its database
    server = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    code = MONGODB_EXAMPLE.replace("mongodb://localhost:27017", f"{server}?namespace={namespace}")
    names = await run_example(code, session=session, session_id=session.session_id)
    try:
        assert names["loaded"] == session
        assert "database='gemini_mcp'" in repr(names["storage"].store)
    finally:
        await names["storage"].close()
        with pymongo.MongoClient(server, serverSelectionTimeoutMS=10_000) as client:
            client["gemini_mcp"].drop_collection(namespace)


async def test_programmatic_config_example(postgres_namespace: str) -> None:
    code = CONFIG_EXAMPLE.replace("postgresql://localhost/gemini",
                                  f"{POSTGRES_URL}?namespace={postgres_namespace}")
    names = await run_example(code)
    storage = names["storage"]
    try:
        session = ChatSession.create("gemini-2.5-flash")
        await storage.save_session(session)
        assert await storage.load_session(session.session_id) == session
    finally:
        await storage.close()
