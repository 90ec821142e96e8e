"""Two processes share one LangGraph store: each puts checkpoints of a thread of its own and
of one shared thread, and writes of its tasks to one shared checkpoint, at the same time.
Afterwards every checkpoint and every write each was told was stored is there, exactly once.
Run as a script, this module is one of the two processes."""

from __future__ import annotations

import subprocess
import sys

from langgraph.checkpoint.base import empty_checkpoint

from kvsessions.integrations.langgraph import KVSessionsSaver
from tests.integrations.conftest import IntegrationStore, child_environment

#: Checkpoints (and tasks writing to the shared checkpoint) per process.
COUNT = 30
WORKERS = ("a", "b")
SHARED = {"configurable": {"thread_id": "shared", "checkpoint_ns": "",
                           "checkpoint_id": "0-shared"}}


def work(url: str, worker: str) -> None:
    """One process: the sync API, as a sync LangGraph application calls it."""
    with KVSessionsSaver(url) as saver:
        parent: dict[str, str] = {}
        for i in range(COUNT):
            for thread in (f"own-{worker}", "shared"):
                config = {"configurable": {"thread_id": thread, "checkpoint_ns": "",
                                           **({"checkpoint_id": parent[thread]}
                                              if thread in parent else {})}}
                stored = saver.put(config, empty_checkpoint(),
                                   {"source": "loop", "step": i, "worker": worker}, {})
                parent[thread] = stored["configurable"]["checkpoint_id"]
            saver.put_writes(SHARED, [("messages", f"{worker}{i}"), ("count", i)],
                             task_id=f"task-{worker}-{i:03d}")


async def test_two_processes_put_checkpoints_and_writes_and_lose_nothing(
        integration_store: IntegrationStore) -> None:
    url = integration_store.url()
    async with KVSessionsSaver(url) as saver:
        checkpoint = empty_checkpoint()
        checkpoint["id"] = "0-shared"
        await saver.aput({"configurable": {"thread_id": "shared", "checkpoint_ns": ""}},
                         checkpoint, {"source": "input", "step": -1}, {})
        children = [subprocess.Popen([sys.executable, "-m", __name__, url, worker],
                                     env=child_environment(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT) for worker in WORKERS]
        for child in children:
            output, _ = child.communicate(timeout=300)
            assert child.returncode == 0, output.decode(errors="replace")
        for worker in WORKERS:
            own = [item async for item in saver.alist(
                {"configurable": {"thread_id": f"own-{worker}"}})]
            assert [item.metadata["step"] for item in own] == list(range(COUNT))[::-1]
            assert all(item.parent_config is not None for item in own[:-1])
        shared = [item async for item in saver.alist({"configurable": {"thread_id": "shared"}})]
        assert len(shared) == 2 * COUNT + 1
        for worker in WORKERS:
            steps = [item.metadata["step"] for item in shared
                     if item.metadata.get("worker") == worker]
            assert steps == list(range(COUNT))[::-1]
        found = await saver.aget_tuple(SHARED)
        assert found is not None and found.pending_writes is not None
        expected = [(f"task-{worker}-{i:03d}", channel, value)
                    for worker in WORKERS for i in range(COUNT)
                    for channel, value in (("messages", f"{worker}{i}"), ("count", i))]
        assert found.pending_writes == expected


if __name__ == "__main__":
    work(sys.argv[1], sys.argv[2])
