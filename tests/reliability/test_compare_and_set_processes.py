"""``compare_and_set`` is atomic across processes, on every store that shares data between
processes: four processes increment one counter by read, compare-and-set, read again on
False; none of their increments is lost, and of four processes creating one key from
"absent" exactly one wins."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

import orjson
import pytest

from kvsessions.kv.base import KVStore
from kvsessions.testing import StoreFactory

PROCESSES = 4
INCREMENTS = 25


async def _increment(store: KVStore, times: int) -> int:
    """Increment the counter ``times`` times; how many compare-and-sets lost a race."""
    lost = 0
    for _ in range(times):
        while True:
            current = await store.get("counter")
            count = 0 if current is None else orjson.loads(current)["n"]
            if await store.compare_and_set("counter", current, orjson.dumps({"n": count + 1})):
                break
            lost += 1
    return lost


def _child(make: Any, namespace: str, index: int, barrier: Any, results: Any) -> None:
    async def run() -> None:
        async with make(namespace) as store:
            barrier.wait(timeout=60)
            created = await store.compare_and_set("once", None, orjson.dumps({"by": index}))
            lost = await _increment(store, INCREMENTS)
            results.put((index, created, lost))

    asyncio.run(run())


def test_compare_and_set_is_atomic_across_processes(store_factory: StoreFactory) -> None:
    if not store_factory.persistent:
        pytest.skip("this store shares nothing between processes")

    async def prepare() -> None:
        async with store_factory.new():
            pass  # tables and folders exist before the processes race

    async def read() -> tuple[Any, Any]:
        async with store_factory.new() as store:
            return await store.get("counter"), await store.get("once")

    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    try:
        asyncio.run(prepare())
        processes = [context.Process(target=_child, args=(
            store_factory.make, store_factory.namespace, index, barrier, results))
            for index in range(PROCESSES)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=180) for _ in processes]
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
        counter, once = asyncio.run(read())
        assert orjson.loads(counter) == {"n": PROCESSES * INCREMENTS}
        winners = [index for index, created, _ in outcomes if created]
        assert len(winners) == 1 and orjson.loads(once) == {"by": winners[0]}
    finally:
        if store_factory.cleanup is not None:
            asyncio.run(store_factory.cleanup())
