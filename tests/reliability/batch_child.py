"""The writer and the reader of tests/reliability/test_batch_atomicity.py, one process each.

``python batch_child.py write URL PREFIX [DIE_AT]``: writes batch after batch with ``put_many``,
every key under ``PREFIX`` (one partition) holding ``{"n": N}`` of batch N; prints ``intent N``
before each call and ``ack N`` after it returned. With ``DIE_AT`` (the file store only) it
writes batch 1, then dies with ``os._exit`` just before the ``DIE_AT``-th rename of batch 2
(the first rename is the journal's): a crash at a chosen point of the batch.

``python batch_child.py read URL PREFIX``: reads the batch's keys with ``get_many``, a scan and
one ``get`` after the other until stdin closes, then prints one JSON line: how many reads, how
many saw keys of different batches (``torn``: must be 0) and how many batch numbers it saw.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Any

import orjson

from kvsessions.kv.registry import open_store

KEYS = 40
MAX_SECONDS = 120.0


def batch_keys(prefix: str) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(KEYS)]


def die_at_rename(count: int) -> None:
    """Make the ``count``-th ``os.replace`` from now end the process instead (a crash)."""
    real = os.replace
    seen = 0

    def replace(*args: Any, **kwargs: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            os._exit(9)
        real(*args, **kwargs)

    os.replace = replace  # type: ignore[assignment]


async def write(url: str, prefix: str, die_at: int | None) -> None:
    keys = batch_keys(prefix)
    started = time.monotonic()
    async with open_store(url) as store:
        n = 0
        while time.monotonic() - started < MAX_SECONDS:
            n += 1
            if die_at is not None and n == 2:
                die_at_rename(die_at)
            print(f"intent {n}", flush=True)
            value = orjson.dumps({"n": n, "pad": "x" * 200})
            await store.put_many([(key, value) for key in keys])
            print(f"ack {n}", flush=True)
            if die_at is not None:
                await asyncio.sleep(0.05)


def batches(values: list[bytes | None]) -> set[Any]:
    return {None if value is None else orjson.loads(value)["n"] for value in values}


async def read(url: str, prefix: str) -> None:
    keys = batch_keys(prefix)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    reads = torn = 0
    seen: set[Any] = set()
    async with open_store(url) as store:
        while not stop.is_set():
            together = await store.get_many(keys)
            scanned = [value async for _, value in store.scan(prefix)]
            for view in (together, scanned or [None] * len(keys)):
                found = batches(view)
                seen |= found
                torn += len(found) > 1 or len(view) != len(keys)
            for _ in range(20):
                first = await store.get(keys[0])
                last = await store.get(keys[-1])  # read after the first: never an older batch
                if first is not None:
                    torn += last is None or batches([last]).pop() < batches([first]).pop()
            reads += 1
            if reads == 1:
                print("reading", flush=True)  # the test counts the writer's batches from here
    print(orjson.dumps({"reads": reads, "torn": torn, "batches": len(seen)}).decode(),
          flush=True)


def main() -> None:
    mode, url, prefix, *rest = sys.argv[1:]
    if mode == "write":
        asyncio.run(write(url, prefix, int(rest[0]) if rest else None))
    else:
        asyncio.run(read(url, prefix))


if __name__ == "__main__":
    main()
