"""SessionManager on every backend in tests/backends, and the three export formats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import ConfigError, KVSessionsError
from kvsessions.sessions.exports import render_session
from kvsessions.sessions.manager import SessionManager
from kvsessions.sessions.storage import MemorySessionStorage, SessionStorage


def aged(session: ChatSession, hours: float) -> ChatSession:
    session.updated_at = datetime.now(UTC) - timedelta(hours=hours)
    return session


async def test_startup_expires_stale_and_loads_active(storage: SessionStorage) -> None:
    fresh = ChatSession.create("m")
    fresh.add_message("user", "hello")
    stale = aged(ChatSession.create("m"), 100)
    archived = ChatSession.create("m")
    archived.status = "archived"
    for session in (fresh, stale, archived):
        await storage.save_session(session)
    manager = SessionManager(storage, expiry_hours=72)
    stats = await manager.startup()
    assert stats["active_sessions"] == 1
    assert stats["expired_sessions"] == 1
    assert stats["messages_loaded"] == 1
    assert (await storage.load_session(stale.session_id)).status == "expired"  # type: ignore[union-attr]
    cached = await manager.get_session(fresh.session_id)
    assert cached is not None and [m.content for m in cached.messages] == ["hello"]
    assert cached is await manager.get_session(fresh.session_id)  # served from memory


async def test_create_auto_save_and_reload(storage: SessionStorage) -> None:
    manager = SessionManager(storage)
    session = await manager.create_session("gemini-2.5-flash")
    assert await storage.load_session(session.session_id) is not None
    session.add_message("user", "Hello!")
    session.add_message("assistant", "Hi there!")
    assert await manager.auto_save(session) is True
    loaded = await SessionManager(storage).get_session(session.session_id)
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["Hello!", "Hi there!"]
    assert await manager.get_session("missing") is None


async def test_auto_save_off_saves_at_shutdown(storage: SessionStorage) -> None:
    manager = SessionManager(storage, auto_save_enabled=False)
    session = await manager.create_session("m")
    session.add_message("user", "kept for later")
    assert await manager.auto_save(session) is False
    assert await storage.load_session(session.session_id) is None
    await manager.shutdown()
    loaded = await storage.load_session(session.session_id)
    assert loaded is not None and loaded.messages[0].content == "kept for later"


async def test_sessions_pushed_out_of_memory_are_saved(storage: SessionStorage) -> None:
    manager = SessionManager(storage, auto_save_enabled=False, max_cached_sessions=2)
    sessions = [await manager.create_session("m") for _ in range(2)]
    sessions[0].add_message("user", "unsaved")
    await manager.create_session("m")  # pushes sessions[0] out
    loaded = await storage.load_session(sessions[0].session_id)
    assert loaded is not None and [m.content for m in loaded.messages] == ["unsaved"]


async def test_archive_and_cleanup(storage: SessionStorage) -> None:
    manager = SessionManager(storage, expiry_hours=1)
    keep = await manager.create_session("m")
    old = await manager.create_session("m")
    await manager.auto_save(aged(old, 2))
    assert await manager.archive_session(keep.session_id) is True
    assert await manager.archive_session("missing") is False
    assert await manager.cleanup_expired_sessions() == 1
    assert await manager.cleanup_expired_sessions() == 0
    statuses = {s.session_id: s.status for s in await storage.list_sessions()}
    assert statuses == {keep.session_id: "archived", old.session_id: "expired"}
    stats = await manager.get_statistics()
    assert stats["sessions_by_status"] == {"active": 0, "archived": 1, "expired": 1}
    assert stats["total_sessions"] == 2 and stats["total_messages"] == 0


async def test_cleanup_spares_sessions_updated_in_memory(storage: SessionStorage) -> None:
    manager = SessionManager(storage, expiry_hours=1, auto_save_enabled=False)
    stored = aged(ChatSession.create("m"), 5)
    await storage.save_session(stored)
    session = await manager.get_session(stored.session_id)
    assert session is not None
    session.add_message("user", "still talking")  # updated now, not saved yet
    assert await manager.cleanup_expired_sessions() == 0


async def test_statistics_counts(storage: SessionStorage, backend_name: str) -> None:
    manager = SessionManager(storage)
    for turns in (1, 3):
        session = await manager.create_session("m")
        for i in range(turns):
            session.add_message("user", str(i))
        await manager.auto_save(session)
    stats = await manager.get_statistics()
    assert stats["total_sessions"] == 2
    assert stats["active_sessions"] == 2
    assert stats["total_messages"] == 4
    assert stats["total_files"] == 0
    assert stats["cached_sessions"] == 2
    cached = backend_name.startswith("cached_")
    assert ("cache" in stats) == cached
    if cached:
        assert isinstance(stats["cache"], dict) and stats["cache"]


async def test_export_to_file_and_missing(storage: SessionStorage, tmp_path: Path) -> None:
    manager = SessionManager(storage)
    session = await manager.create_session("m")
    session.add_message("user", "Hello!")
    await manager.auto_save(session)
    target = tmp_path / "out" / "export.md"
    assert await manager.export_to_file(session.session_id, target, format="markdown")
    assert target.read_text(encoding="utf-8").startswith(f"# Chat Session: {session.session_id}")
    assert await manager.export_to_file("missing", tmp_path / "x.json") is False
    assert not (tmp_path / "x.json").exists()
    assert await manager.export_session("missing") is None
    with pytest.raises(KVSessionsError, match="yaml"):
        await manager.export_session(session.session_id, format="yaml")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="expiry_hours"):
        SessionManager(MemorySessionStorage(), expiry_hours=0)
    with pytest.raises(ConfigError, match="max_cached_sessions"):
        SessionManager(MemorySessionStorage(), max_cached_sessions=0)


# -------------------------------------------------------------------- export formats

def sample() -> ChatSession:
    session = ChatSession("abc-123", "gemini-2.5-flash",
                          datetime(2025, 10, 16, 10, 0, 0, tzinfo=UTC),
                          datetime(2025, 10, 16, 10, 0, 2, tzinfo=UTC), message_count=2)
    session.messages = [
        ChatMessage("m1", "abc-123", "user", "Hello!",
                    datetime(2025, 10, 16, 10, 0, 1, tzinfo=UTC)),
        ChatMessage("m2", "abc-123", "assistant", "Hi there!",
                    datetime(2025, 10, 16, 10, 0, 2, tzinfo=UTC)),
    ]
    return session


def test_json_export_has_the_seed_shape() -> None:
    exported = orjson.loads(render_session(sample(), "json"))
    assert exported == {
        "session_id": "abc-123",
        "model": "gemini-2.5-flash",
        "created_at": "2025-10-16T10:00:00+00:00",
        "message_count": 2,
        "messages": [
            {"role": "user", "content": "Hello!", "created_at": "2025-10-16T10:00:01+00:00"},
            {"role": "assistant", "content": "Hi there!",
             "created_at": "2025-10-16T10:00:02+00:00"},
        ],
    }
    assert render_session(sample(), "json").startswith('{\n  "session_id": "abc-123",')


def test_markdown_export_is_the_seed_layout() -> None:
    assert render_session(sample(), "markdown") == (
        "# Chat Session: abc-123\n"
        "\n"
        "**Model:** gemini-2.5-flash\n"
        "**Created:** 2025-10-16 10:00:00\n"
        "**Messages:** 2\n"
        "\n"
        "---\n"
        "\n"
        "### 👤 User (10:00:01)\n"
        "\n"
        "Hello!\n"
        "\n"
        "### 🤖 Assistant (10:00:02)\n"
        "\n"
        "Hi there!\n"
    )


def test_text_export_is_the_seed_layout() -> None:
    assert render_session(sample(), "text") == (
        "Chat Session: abc-123\n"
        "Model: gemini-2.5-flash\n"
        "Created: 2025-10-16 10:00:00\n"
        "Messages: 2\n"
        "\n"
        + "=" * 80 + "\n"
        "\n"
        "[10:00:01] USER:\n"
        "Hello!\n"
        "\n"
        "[10:00:02] ASSISTANT:\n"
        "Hi there!\n"
    )
