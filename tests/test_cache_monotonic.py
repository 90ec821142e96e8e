"""Issue 11 item 7 unforced, with real processes: one process writes versions 1..N of a key
through its CachedStore while reader processes (several tasks each, no local tier, so every
read is a Redis hit or a miss that fills Redis) read it as fast as they can. No read may
return an older version than a read that finished before it started, in any process.

Run this file as a script (``writer`` / ``reader`` mode) to get the child processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from kvsessions.kv.registry import open_store
from kvsessions.wrappers.cache import CachedStore

REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent
WRITES = 400
READERS, TASKS = 2, 4


async def writer(inner_url: str, local: str) -> None:
    async with CachedStore(open_store(inner_url), redis_url=REDIS_URL) as store:
        for n in range(1, WRITES + 1):
            await store.put("hot", orjson.dumps({"n": n}))


async def reader(inner_url: str, local: str) -> None:
    """Reads until it sees the last version; prints (start, end, version) of every read."""
    reads: list[tuple[float, float, int]] = []
    async with CachedStore(open_store(inner_url), redis_url=REDIS_URL,
                           local_maxsize=10_000 if local == "local" else 0) as store:
        async def loop() -> None:
            version = 0
            while version < WRITES:
                started = time.time()
                value = await store.get("hot")
                version = orjson.loads(value)["n"] if value is not None else 0
                reads.append((started, time.time(), version))
                await asyncio.sleep(0)  # a local hit never yields: let the messages in

        await asyncio.gather(*(loop() for _ in range(TASKS)))
    print(json.dumps(reads))


def older_after_newer(reads: list[tuple[float, float, int]]) -> list[str]:
    """Reads that returned less than a read which had finished before they started."""
    by_end = sorted(reads, key=lambda r: r[1])
    found: list[str] = []
    newest, done = 0, 0
    for started, _, version in sorted(reads):
        while done < len(by_end) and by_end[done][1] < started:
            newest = max(newest, by_end[done][2])
            done += 1
        if version < newest:
            found.append(f"read v{version} after v{newest} had been read")
    return found


@pytest.mark.parametrize("local", ["local", "redis only"])
async def test_readers_in_other_processes_never_go_back(local: str, tmp_path: Path) -> None:
    """Without a local tier no read anywhere goes back; with one, another process may lag by
    an invalidation's flight, but no read goes back within a process."""
    namespace = "mono_" + uuid.uuid4().hex[:12]
    inner_url = f"sqlite:///{tmp_path}/shared.db?namespace={namespace}"
    async with open_store(inner_url) as store:
        await store.put("hot", orjson.dumps({"n": 0}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def spawn(role: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, __file__, role, inner_url, local],
                                stdout=subprocess.PIPE, env=env, cwd=str(ROOT))

    from tests.backends.cached import forget_cache

    readers = [spawn("reader") for _ in range(READERS)]
    children = list(readers)
    try:
        await asyncio.sleep(0.3)  # the readers are reading
        write = spawn("writer")
        children.append(write)
        # Timeouts only keep a broken build from hanging: liveness, not speed.
        outputs = [await asyncio.to_thread(p.communicate, timeout=180) for p in readers]
        await asyncio.to_thread(write.communicate, timeout=180)
        assert write.returncode == 0
        reads: list[tuple[float, float, int]] = []
        problems: list[str] = []
        for process, (out, _) in zip(readers, outputs, strict=True):
            assert process.returncode == 0
            own = [(float(a), float(b), int(n)) for a, b, n in json.loads(out)]
            problems += older_after_newer(own) if local == "local" else []
            reads += own
        assert len({version for _, _, version in reads}) > 10  # they did read along
        problems += [] if local == "local" else older_after_newer(reads)
        assert not problems, f"{len(problems)} of {len(reads)} reads: {problems[:5]}"
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        await forget_cache([namespace])


if __name__ == "__main__" and len(sys.argv) == 4:
    asyncio.run({"writer": writer, "reader": reader}[sys.argv[1]](sys.argv[2], sys.argv[3]))
