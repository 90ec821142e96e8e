"""The writer that tests/reliability/test_kill_during_writes.py kills with SIGKILL.

Run as ``python writer_child.py STORE_URL``. It imports everything once and then waits on
stdin for ``run ROUND SEED`` lines (``quit`` or end of input stops it). Each ``run`` forks a
writer process, so a round costs a fork, not a Python start-up; the writer opens the store
fresh and writes until it is killed. The zygote reports ``started PID`` and, once the writer is
gone, ``reaped PID STATUS`` (so the dead writer is no zombie: the file store's temp-file
cleanup asks whether the writing process still lives).

The writer prints one JSON line to stdout (one ``write``, so it reaches the pipe whole)
*before* each call, ``{"intent": ...}`` with the documents it is about to write, and one
*after* the call returned, ``{"ack": ...}``: an acknowledged document must survive the kill,
an intended one may or may not be there, and nothing else may.

Every document is a valid ``message`` v1 document whose ``metadata.sha256`` is the SHA-256 of
its ``content``, so a torn or mixed document is caught by the schema or by that check.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from kvsessions.documents.codec import decode_document, encode_document, message_to_document
from kvsessions.documents.keys import message_key, session_key
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.documents.validation import validate_document
from kvsessions.errors import KVSessionsError
from kvsessions.kv.registry import open_store
from kvsessions.sessions.storage import SessionStorage

#: Content sizes (bytes) and how often each is drawn: mostly small, now and then large enough
#: that writing one takes several system calls.
SIZES = (100, 1_000, 8_000, 64_000)
SIZE_WEIGHTS = (5, 3, 2, 1)
#: A writer that is never killed stops by itself after this long (the parent died?).
MAX_SECONDS = 120.0
NON_ASCII = "héllo ☃ 😀 עברית "


def round_prefix(round_number: int) -> str:
    """Session ids of one round share this prefix, so its keys are one prefix scan."""
    return f"crash{round_number:03d}"


def digest(document: dict[str, Any]) -> str:
    """The fingerprint of a document that survives JSONB/BSON reordering its fields."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_document(key: str, value: bytes) -> dict[str, Any] | None:
    """The document if it decodes, meets its schema and (a message) its own checksum; None
    for anything torn, mixed or foreign."""
    try:
        document = decode_document(value, key=key)
        validate_document(document, key=key)
    except KVSessionsError:
        return None
    if document["kind"] == "message":
        content = document["content"].encode()
        if document["metadata"].get("sha256") != hashlib.sha256(content).hexdigest():
            return None
    return document


def make_message(rng: random.Random, session_id: str, message_id: str) -> ChatMessage:
    size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
    content = NON_ASCII + rng.randbytes(size // 2).hex()
    metadata = {"sha256": hashlib.sha256(content.encode()).hexdigest(), "n": rng.random()}
    return ChatMessage(message_id, session_id, rng.choice(["user", "assistant"]), content,
                       datetime.now(UTC), metadata)


def say(**line: Any) -> None:
    os.write(1, orjson.dumps(line) + b"\n")


async def write_until_killed(url: str, round_number: int, seed: int) -> None:
    rng = random.Random(seed)
    prefix = round_prefix(round_number)
    raw_session = f"{prefix}r"
    store = open_store(url)
    await store.open()
    storage = SessionStorage(store)
    session = ChatSession(f"{prefix}s", "crash-test", datetime.now(UTC), datetime.now(UTC))
    head = session_key(session.session_id)
    say(intent="session", docs={}, session=session.session_id)
    await storage.save_session(session)
    say(ack="session", docs={}, session=session.session_id, head=head)
    written: list[str] = []  # keys of raw documents, some of which get overwritten
    counter = 0
    parent = os.getppid()
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline and os.getppid() == parent:
        choice = rng.random()
        if choice < 0.65:  # one put, or a put_many of 2-6 documents
            count = 1 if choice < 0.35 else rng.randint(2, 6)
            batch: list[tuple[str, dict[str, Any]]] = []
            for _ in range(count):
                if written and rng.random() < 0.3:
                    key = rng.choice(written)
                    message_id = key.rpartition(":")[2]
                else:
                    counter += 1
                    message_id = f"{counter:06d}"
                    key = message_key(raw_session, message_id)
                    written.append(key)
                if any(key == other for other, _ in batch):
                    continue
                document = message_to_document(make_message(rng, raw_session, message_id))
                batch.append((key, document))
            docs = {key: digest(document) for key, document in batch}
            operation = "put" if count == 1 else "put_many"
            say(intent=operation, docs=docs)
            if operation == "put":
                key, document = batch[0]
                await store.put(key, encode_document(document, key=key))
            else:
                await store.put_many([(key, encode_document(document, key=key))
                                      for key, document in batch])
            say(ack=operation, docs=docs)
        else:
            counter += 1
            message = make_message(rng, session.session_id, f"{counter:06d}")
            key = message_key(session.session_id, message.message_id)
            docs = {key: digest(message_to_document(message))}
            say(intent="append", docs=docs, session=session.session_id)
            await storage.append_message(session.session_id, message)
            say(ack="append", docs=docs, session=session.session_id)
    say(done=True)


def writer(url: str, round_number: int, seed: int) -> None:
    """The forked writer: never returns."""
    code = 0
    try:
        asyncio.run(write_until_killed(url, round_number, seed))
    except BaseException as exc:  # reported to the parent through stderr and the status
        print(f"writer failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 3
    os._exit(code)


def zygote(url: str) -> None:
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        _, round_number, seed = words
        pid = os.fork()
        if pid == 0:
            writer(url, int(round_number), int(seed))
        say(started=pid)
        _, status = os.waitpid(pid, 0)
        say(reaped=pid, status=os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    zygote(sys.argv[1])
