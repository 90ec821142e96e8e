"""How ``file_store_before_pieces/`` was made: with the release before the folder-per-piece
file layout (commit ce56121), run as
``PYTHONPATH=<checkout of that commit> python make_file_store_before_pieces.py DIR``.
``manifest.json`` holds every live document as that release scanned it."""

import asyncio
import sys
from pathlib import Path

import orjson

from kvsessions import ChatSession, SessionStorage, UploadedFileRecord
from kvsessions.kv.file import FileStore


async def main(root: str) -> None:
    store = FileStore(root, namespace="chat")
    async with store:
        storage = SessionStorage(store)
        await storage.initialize()
        for s in range(3):
            session = ChatSession.create("gemini-2.5-flash", metadata={"n": s})
            for m in range(4):
                session.add_message("user" if m % 2 == 0 else "assistant",
                                    f"message {m} of {s} é😀")
            await storage.save_session(session)
        record = UploadedFileRecord.create("files/1", "https://example.invalid/1", "a.pdf", 10,
                                           "application/pdf")
        await storage.save_file_record(record)
        await store.put("plain", b'{"short": true}')
        await store.put("x" * 300, b'{"long": 1}')  # in .d folders
        await store.put("y:" + "é" * 100, b'{"long": 2}')
        await store.put("\U0001F600" * 40 + ":z", b'{"long": 3}')
        manifest = {key: orjson.loads(value) async for key, value in store.scan()}
        await store.put("cache:expired", b'{"ttl": true}', ttl=0.01)  # stays on disk, expired
    Path(root, "manifest.json").write_bytes(
        orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


asyncio.run(main(sys.argv[1]))
