"""``append_message`` on SQLite beside the floor of the same work in plain ``sqlite3``.

The floor is what an application would write with no library at all, on the event loop's own
thread (no hop): read the head row and decode it, then in one transaction insert the message
document and write the head back with its count moved on; the same pragmas as the store's
default durability (WAL, ``synchronous=NORMAL``) and messages of about 300 bytes. Ours is
``SessionStorage.append_message`` on a ``SQLiteStore`` at its default durability, to a session
of 10 messages, with the session index kept. Ratio = our time / the floor's (target 3, from
the hot-path issue).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import uuid
from pathlib import Path

import orjson

from benchmarks.harness import BenchContext
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.kv.sqlite import SQLiteStore
from kvsessions.sessions.storage import SessionStorage

SECTION = "sqlite_floor"
TARGET = 3.0
TEXT = "x" * 200  # with the document's other fields, about 300 bytes


async def run(ctx: BenchContext) -> None:
    if not ctx.wanted("sqlite"):
        return
    folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-"))
    try:
        await bench(ctx, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def bench(ctx: BenchContext, folder: Path) -> None:
    appends = ctx.n(2000)
    async with SQLiteStore(folder / "ours.db", namespace="bench") as store:
        storage = SessionStorage(store)
        session = ChatSession.create("floor")
        await storage.save_session(session)
        for i in range(10):
            await storage.append_message(session.session_id, ChatMessage.create(
                session.session_id, "user", f"{TEXT} {i}"))
        floor = PlainSQLite(folder / "raw.db")
        try:
            async def ours() -> None:
                for i in range(appends):
                    await storage.append_message(session.session_id, ChatMessage.create(
                        session.session_id, "user", f"{TEXT} {i}"))

            async def raw() -> None:
                for i in range(appends):
                    floor.append(f"{TEXT} {i}")

            ours_rate, raw_rate = await ctx.paired(appends, ours, raw)
        finally:
            floor.close()
    ctx.row(SECTION, "append_message vs plain sqlite3", "sqlite", ours_rate, raw_rate,
            target=TARGET, note="raw = read the head, insert the message, write the head, "
            "one transaction, on the loop's thread")


class PlainSQLite:
    """The append as plain ``sqlite3`` code: one head row and one row per message."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("CREATE TABLE kv (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL) "
                        "WITHOUT ROWID")
        self.session = str(uuid.uuid4())
        self.head_key = f"session:{self.session}"
        self.db.execute("INSERT INTO kv VALUES (?, ?)", (self.head_key, orjson.dumps(
            {"session_id": self.session, "message_count": 0, "updated_at": ""})))

    def append(self, content: str) -> None:
        (value,) = self.db.execute("SELECT value FROM kv WHERE key = ?",
                                   (self.head_key,)).fetchone()
        head = orjson.loads(value)
        message_id = str(uuid.uuid4())
        head["message_count"] += 1
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO kv VALUES (?, ?)", (
            f"message:{self.session}:{message_id}",
            orjson.dumps({"message_id": message_id, "session_id": self.session,
                          "role": "user", "content": content, "metadata": {}})))
        self.db.execute("UPDATE kv SET value = ? WHERE key = ?",
                        (orjson.dumps(head), self.head_key))
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
