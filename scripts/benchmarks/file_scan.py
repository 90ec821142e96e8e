"""The file store's scans in O(result) (issue 13): "latest 50 messages" of one 1,000-message
session (``SessionStorage.load_messages(sid, limit=50)``: a reverse scan of the session's
prefix) with 1,000 and with 100,000 other documents in the folder (other sessions of 100
messages and their heads; counts times ``--scale`` for the large folder only).

The raw column is the same call with 1,000 other documents, so the ratio is "time with 100,000
others / time with 1,000 others" (target 1.3: the same cost). The folders are filled with
``fsync=false`` (not timed); the timed store fsyncs as by default (reads do not fsync).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.harness import BenchContext
from kvsessions.documents import codec
from kvsessions.documents.models import ChatSession
from kvsessions.kv.file import FileStore
from kvsessions.sessions.storage import SessionStorage

SESSION_MESSAGES = 1000
OTHERS_SMALL = 1000
OTHERS_LARGE = 100_000
PER_OTHER_SESSION = 100
CALLS = 200
TARGET = 1.3


async def fill(root: Path, others: int) -> str:
    """One 1,000-message session and ``others`` other documents; the session's id."""
    async with FileStore(root, namespace="bench", fsync=False) as store:
        storage = SessionStorage(store)
        await storage.initialize()
        target = session_with(SESSION_MESSAGES)
        await storage.save_session(target)
        written = 0
        while written < others:
            session = session_with(min(PER_OTHER_SESSION, others - written - 1))
            items = [(key, codec.encode_document(document))
                     for key, document in documents_of(session)]
            await store.put_many(items)
            written += len(items)
        return target.session_id


def session_with(messages: int) -> ChatSession:
    session = ChatSession.create("gemini-2.5-flash")
    for i in range(messages):
        session.add_message("user" if i % 2 == 0 else "assistant", f"message {i} " + "x" * 150)
    return session


def documents_of(session: ChatSession) -> list[tuple[str, dict[str, object]]]:
    from kvsessions.documents import keys

    found: list[tuple[str, dict[str, object]]] = [
        (keys.message_key(session.session_id, m.message_id), codec.message_to_document(m))
        for m in session.messages]
    found.append((keys.session_key(session.session_id), codec.session_to_document(session)))
    return found


async def latest_50(root: Path, session_id: str, calls: int) -> float:
    """Calls per second of the latest 50 messages, in a freshly opened store."""
    async with FileStore(root, namespace="bench") as store:
        storage = SessionStorage(store)
        assert len(await storage.load_messages(session_id, limit=50)) == 50
        start = time.perf_counter()
        for _ in range(calls):
            await storage.load_messages(session_id, limit=50)
        return calls / (time.perf_counter() - start)


async def run(ctx: BenchContext) -> None:
    if not ctx.wanted("file"):
        return
    large = max(OTHERS_SMALL, ctx.n(OTHERS_LARGE))
    folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-file-scan-"))
    try:
        small_sid = await fill(folder / "small", OTHERS_SMALL)
        large_sid = await fill(folder / "large", large)
        small_rates, large_rates = [], []
        for _ in range(ctx.repeats):  # interleaved, so drift hits both alike
            small_rates.append(await latest_50(folder / "small", small_sid, CALLS))
            large_rates.append(await latest_50(folder / "large", large_sid, CALLS))
        small, big = sorted(small_rates)[len(small_rates) // 2], sorted(large_rates)[
            len(large_rates) // 2]
        ctx.row("file_scan", f"latest 50 of {SESSION_MESSAGES:,}, {large:,} others vs "
                f"{OTHERS_SMALL:,}", "file", big, small, target=TARGET,
                note=f"{1e3 / small:.2f} ms with {OTHERS_SMALL:,} others, {1e3 / big:.2f} ms "
                     f"with {large:,}; ratio {small / big:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
