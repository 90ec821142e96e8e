"""A scan left early is closed at once, not later by the garbage collector's finalizer (which
runs a task per unfinished generator on the loop: a tenth of a short read's time)."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.sessions.storage import SessionStorage


async def test_short_reads_leave_no_generator_to_finalize(storage: SessionStorage) -> None:
    session = ChatSession.create("m")
    for i in range(30):
        session.add_message("user", f"message {i}")
    await storage.save_session(session)
    finalized: list[Any] = []
    first_iter, finalizer = sys.get_asyncgen_hooks()
    assert finalizer is not None

    def counting(generator: Any) -> None:
        finalized.append(generator)
        finalizer(generator)

    sys.set_asyncgen_hooks(first_iter, counting)
    try:
        latest = await storage.load_messages(session.session_id, limit=5)
        message = await storage.pop_message(session.session_id)
        first = [key async for key, _ in storage.store.scan("message:", limit=2)]
        async for _ in storage.store.scan("message:"):
            break  # a caller that has enough
        gc.collect()
        await asyncio.sleep(0)
    finally:
        sys.set_asyncgen_hooks(first_iter, finalizer)
    assert [m.content for m in latest] == [f"message {i}" for i in range(25, 30)]
    assert isinstance(message, ChatMessage) and message.content == "message 29"
    assert len(first) == 2
    assert [getattr(g, "__qualname__", g) for g in finalized] == ["KVStore.scan"]
