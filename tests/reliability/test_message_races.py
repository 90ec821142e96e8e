"""Two processes edit one session's messages at once (issue 14, acceptance): one pops, appends,
deletes, updates and now and then clears; the other appends (one or several at a time) and
updates the latest message. They race for ``SECONDS_PER_SOAK`` seconds times ``--soak`` (the
issue's 20 seconds: ``--soak 8``) on every backend (two tasks of one process on the in-process
stores). Afterwards:

* the head's ``message_count`` equals the number of message documents stored, and a full
  load reads exactly those;
* no message was popped twice, and nothing popped or deleted is still stored;
* nothing is lost or made up: every message either writer appended is stored, or was removed
  by exactly one pop, delete or clear (appended = stored + popped + deleted + cleared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

from kvsessions.documents.keys import message_prefix
from kvsessions.documents.models import ChatMessage, ChatSession
from kvsessions.errors import MessageNotFoundError
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory

SECONDS_PER_SOAK = 2.5
#: The first worker's operations and their weights.
POPPER_MIX = {"pop": 35, "append": 30, "delete": 20, "update": 12, "clear": 3}


class Log:
    def __init__(self) -> None:
        self.appended: list[str] = []
        self.popped: list[str] = []
        self.deleted: list[str] = []
        self.cleared = 0
        self.operations = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


async def _append(storage: SessionStorage, session_id: str, log: Log, rng: random.Random,
                  name: str) -> None:
    size = rng.choice((1, 1, 2, 4))
    batch = [ChatMessage.create(session_id, "user", f"{name}:{len(log.appended) + i}")
             for i in range(size)]
    if size == 1:
        await storage.append_message(session_id, batch[0])
    else:
        await storage.append_messages(session_id, batch)
    log.appended += [message.message_id for message in batch]


async def _update_one(storage: SessionStorage, session_id: str, rng: random.Random,
                      name: str, latest: bool) -> None:
    page = await storage.load_messages(session_id, limit=1 if latest else 5)
    if page:
        with contextlib.suppress(MessageNotFoundError):  # popped or deleted meanwhile
            await storage.update_message(session_id, rng.choice(page).message_id,
                                         content=f"edited by {name}", metadata={"by": name})


async def popper(storage: SessionStorage, session_id: str, until: float, seed: int) -> Log:
    rng, log = random.Random(seed), Log()
    operations, weights = list(POPPER_MIX), list(POPPER_MIX.values())
    while time.monotonic() < until:
        log.operations += 1
        operation = rng.choices(operations, weights)[0]
        if operation == "pop":
            message = await storage.pop_message(session_id)
            if message is not None:
                log.popped.append(message.message_id)
        elif operation == "append":
            await _append(storage, session_id, log, rng, "a")
        elif operation == "delete":
            page = await storage.load_messages(session_id, limit=5)
            if page:
                target = rng.choice(page).message_id
                if await storage.delete_message(session_id, target):
                    log.deleted.append(target)
        elif operation == "update":
            await _update_one(storage, session_id, rng, "a", latest=False)
        else:
            log.cleared += await storage.clear_messages(session_id)
    return log


async def appender(storage: SessionStorage, session_id: str, until: float, seed: int) -> Log:
    rng, log = random.Random(seed), Log()
    while time.monotonic() < until:
        log.operations += 1
        if rng.random() < 0.85:
            await _append(storage, session_id, log, rng, "b")
        else:
            await _update_one(storage, session_id, rng, "b", latest=True)
    return log


WORKERS = {"popper": popper, "appender": appender}


def _race(make: Any, namespace: str, session_id: str, name: str, seconds: float,
          barrier: Any, out: str) -> None:
    async def run() -> None:
        async with SessionStorage(make(namespace)) as storage:
            barrier.wait(timeout=60)
            log = await WORKERS[name](storage, session_id, time.monotonic() + seconds,
                                      hash(name) & 0xFFFF)
        Path(out).write_text(json.dumps(log.as_dict()), encoding="utf-8")

    asyncio.run(run())


async def _check(storage: SessionStorage, session_id: str,
                 logs: list[dict[str, Any]]) -> None:
    keys = await storage.store.keys(message_prefix(session_id))
    head = await storage.load_session(session_id, last_messages=0)
    loaded = await storage.load_session(session_id)
    assert head is not None and loaded is not None
    assert head.message_count == len(keys) == len(loaded.messages) == loaded.message_count
    stored = {message.message_id for message in loaded.messages}
    appended = [mid for log in logs for mid in log["appended"]]
    popped = [mid for log in logs for mid in log["popped"]]
    deleted = [mid for log in logs for mid in log["deleted"]]
    cleared = sum(log["cleared"] for log in logs)
    assert len(set(appended)) == len(appended)
    assert len(set(popped + deleted)) == len(popped) + len(deleted)  # each removed once
    assert not stored & set(popped + deleted)
    assert stored <= set(appended)
    assert len(appended) == len(stored) + len(popped) + len(deleted) + cleared
    assert all(log["operations"] > 10 for log in logs), logs


def test_two_processes_popping_and_appending_keep_the_count_exact(
        store_factory: StoreFactory, soak: int, tmp_path: Path) -> None:
    seconds = SECONDS_PER_SOAK * soak
    session = ChatSession.create("gemini-2.5-flash")
    session_id = session.session_id

    async def in_one_process() -> None:
        async with SessionStorage(store_factory.new()) as storage:
            await storage.save_session(session)
            until = time.monotonic() + seconds
            logs = await asyncio.gather(popper(storage, session_id, until, 1),
                                        appender(storage, session_id, until, 2))
            await _check(storage, session_id, [log.as_dict() for log in logs])

    async def prepare() -> None:
        async with SessionStorage(store_factory.new()) as storage:
            await storage.save_session(session)

    async def check(logs: list[dict[str, Any]]) -> None:
        async with SessionStorage(store_factory.new()) as storage:
            await _check(storage, session_id, logs)

    try:
        if not store_factory.persistent:
            asyncio.run(in_one_process())
            return
        asyncio.run(prepare())
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(len(WORKERS))
        outs = [str(tmp_path / f"{name}.json") for name in WORKERS]
        processes = [context.Process(target=_race, args=(
            store_factory.make, store_factory.namespace, session_id, name, seconds, barrier,
            out)) for name, out in zip(WORKERS, outs, strict=True)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=seconds + 120)
            assert process.exitcode == 0, f"worker process failed ({process.exitcode})"
        asyncio.run(check([json.loads(Path(out).read_text(encoding="utf-8"))
                           for out in outs]))
    finally:
        if store_factory.cleanup is not None:
            asyncio.run(store_factory.cleanup())
