"""The LangChain and LangGraph adapters of kvsessions beside each framework's own store, for the
peers section (issue 17): the same calls through each framework's public async API.

* LangChain: ``KVSessionsChatMessageHistory`` on kvsessions' SQLite (default and strict
  durability) beside ``SQLChatMessageHistory`` (SQLAlchemy + aiosqlite, an fsync per commit):
  append one message at history 10 and 1,000, load 1,000 and 10,000 messages.
* LangGraph: ``KVSessionsSaver`` on the same two SQLite setups beside ``AsyncSqliteSaver``
  (langgraph-checkpoint-sqlite: WAL, ``synchronous`` left at FULL, so an fsync per commit) and
  ``InMemorySaver`` (no durability at all; shown for scale, no target): put a checkpoint (ten
  200-byte messages in its state) with the two writes of its task, as a graph step does, and get
  the latest checkpoint of a thread of 100 with its writes, as every run starts.

Each framework store is compared with the adapter on kvsessions' default SQLite (the issue's
target, 0.7, as the hot-path rows compare the default with the best peer) and, when the store
fsyncs every commit, with the adapter on ``durability=strict`` too (equal durability: the disk
sets the pace, target 1.0).
"""

from __future__ import annotations

import importlib.util
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from benchmarks._peer_stores import LangChainSQL, Peer, text
from benchmarks.harness import BenchContext
from kvsessions import SessionStorage

#: kvsessions' time over the framework store's (issue 17); at equal durability (both fsync
#: every commit, so the disk sets the pace) the hot-path issue's target.
ADAPTER_TARGET, STRICT_TARGET = 0.7, 1.0
#: Checkpoints in the thread whose latest one is read.
THREAD_CHECKPOINTS = 100


def _sqlite(folder: Path, name: str, durability: str) -> SessionStorage:
    return SessionStorage.from_url(f"sqlite:///{folder / f'{name}_{durability}.db'}"
                                   f"?durability={durability}")


class LangChainHistory(Peer):
    """``KVSessionsChatMessageHistory`` on a SQLite ``SessionStorage``."""

    kvsessions = True

    def __init__(self, durability: str) -> None:
        self.durability, self.fsyncs = durability, durability == "strict"
        self.name = f"kvsessions LangChain history sqlite {durability}"

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from langchain_core.messages import AIMessage, HumanMessage

        from kvsessions.integrations.langchain import KVSessionsChatMessageHistory

        self.storage = _sqlite(folder, "langchain", self.durability)
        await self.storage.initialize()
        stack.push_async_callback(self.storage.close)
        self._new = lambda: KVSessionsChatMessageHistory(uuid.uuid4().hex, self.storage)
        self._message = lambda i: (HumanMessage if i % 2 == 0 else AIMessage)(content=text(i))

    async def fill(self, messages: int) -> Any:
        history = self._new()
        for start in range(0, messages, 1000):
            await history.aadd_messages([self._message(i)
                                         for i in range(start, min(messages, start + 1000))])
        return history

    async def append(self, session: Any, i: int) -> None:
        await session.aadd_messages([self._message(i)])

    async def load(self, session: Any) -> int:
        return len(await session.aget_messages())


class Checkpointer(Peer):
    """A LangGraph checkpointer driven as a graph drives it; ``fill`` makes a thread."""

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        self.saver = await self._saver(folder, stack)

    async def _saver(self, folder: Path, stack: AsyncExitStack) -> Any:
        raise NotImplementedError

    async def fill(self, checkpoints: int) -> Any:
        config = {"configurable": {"thread_id": uuid.uuid4().hex, "checkpoint_ns": ""}}
        for i in range(checkpoints):
            config = await self.step(config, i)
        return config

    async def step(self, config: Any, i: int) -> Any:
        """One graph step: the new checkpoint, then the writes of the task it runs."""
        from langgraph.checkpoint.base import empty_checkpoint

        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": [text(j) for j in range(i, i + 10)]}
        checkpoint["channel_versions"] = {"messages": i + 1}
        stored = await self.saver.aput(config, checkpoint, {"source": "loop", "step": i},
                                       {"messages": i + 1})
        await self.saver.aput_writes(stored, [("messages", text(i)), ("next", i)],
                                     task_id=f"task-{i}")
        return stored

    async def append(self, session: Any, i: int) -> None:
        await self.step(session, i)

    async def load(self, session: Any) -> int:
        latest = {"configurable": {**session["configurable"], "checkpoint_id": None}}
        found = await self.saver.aget_tuple(latest)
        return len(found.pending_writes)


class KVSessionsCheckpointer(Checkpointer):
    kvsessions = True

    def __init__(self, durability: str) -> None:
        self.durability, self.fsyncs = durability, durability == "strict"
        self.name = f"kvsessions LangGraph saver sqlite {durability}"

    async def _saver(self, folder: Path, stack: AsyncExitStack) -> Any:
        from kvsessions.integrations.langgraph import KVSessionsSaver

        storage = _sqlite(folder, "langgraph", self.durability)
        await storage.initialize()
        stack.push_async_callback(storage.close)
        return KVSessionsSaver(storage)


class AsyncSqliteCheckpointer(Checkpointer):
    name, package, fsyncs = "LangGraph AsyncSqliteSaver", "langgraph-checkpoint-sqlite", True

    async def _saver(self, folder: Path, stack: AsyncExitStack) -> Any:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        saver = await stack.enter_async_context(
            AsyncSqliteSaver.from_conn_string(str(folder / "langgraph_sqlite.db")))
        await saver.setup()
        return saver


class InMemoryCheckpointer(Checkpointer):
    name, package, per_message = "LangGraph InMemorySaver", "langgraph", True

    async def _saver(self, folder: Path, stack: AsyncExitStack) -> Any:
        from langgraph.checkpoint.memory import InMemorySaver

        return InMemorySaver()


def _installed(modules: list[str], what: str) -> bool:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"peers: {what} skipped: {', '.join(missing)} not installed "
              f"(pip install -e '.[bench,integrations]')", flush=True)
    return not missing


async def bench(ctx: BenchContext, folder: Path, stack: AsyncExitStack) -> None:
    """The adapter rows, measured and reported with peers' own ``measure``."""
    from benchmarks.peers import SECTION, measure

    if not ctx.wanted("sqlite"):
        return
    mid, big = max(10, ctx.n(1000)), max(50, ctx.n(10_000))
    if _installed(["langchain_core", "langchain_community", "sqlalchemy", "aiosqlite"],
                  "LangChain adapter rows"):
        ours: list[Peer] = [LangChainHistory("normal"), LangChainHistory("strict")]
        framework: list[Peer] = [LangChainSQL()]
        await _rows(ctx, SECTION, measure, folder, stack, ours, framework,
                    appends=[10, mid], loads=[mid, big], unit="messages")
    if _installed(["langgraph.checkpoint.sqlite", "aiosqlite"], "LangGraph adapter rows"):
        ours = [KVSessionsCheckpointer("normal"), KVSessionsCheckpointer("strict")]
        framework = [AsyncSqliteCheckpointer(), InMemoryCheckpointer()]
        await _rows(ctx, SECTION, measure, folder, stack, ours, framework,
                    appends=[THREAD_CHECKPOINTS], loads=[THREAD_CHECKPOINTS],
                    unit="checkpoints")


async def _rows(ctx: BenchContext, section: str, measure: Any, folder: Path,
                stack: AsyncExitStack, ours: list[Peer], framework: list[Peer], *,
                appends: list[int], loads: list[int], unit: str) -> None:
    players = [*ours, *framework]
    for player in players:
        await player.open(folder, stack)
    filled: dict[tuple[str, int], Any] = {}

    async def filled_with(player: Peer, size: int) -> Any:
        if (player.name, size) not in filled:
            filled[player.name, size] = await player.fill(size)
        return filled[player.name, size]

    for size in loads:
        reads = max(2, ctx.n(10_000 // size * 2) if unit == "messages" else ctx.n(200))
        expected = size if unit == "messages" else 2  # messages; or the latest one's writes

        async def load(player: Peer, session: Any, reads: int = reads,
                       expected: int = expected) -> None:
            for _ in range(reads):
                assert await player.load(session) == expected

        rates = await measure(ctx, players, reads, load,
                              lambda p, size=size: filled_with(p, size), fresh=False)
        what = (f"LangChain load {size:,} messages" if unit == "messages" else
                f"LangGraph get the latest of {size:,} checkpoints")
        _report(ctx, section, what, ours, framework, rates)
    appends_per_run = ctx.n(50)
    for size in appends:
        async def append(player: Peer, session: Any) -> None:
            for i in range(appends_per_run):
                await player.append(session, i)

        rates = await measure(ctx, players, appends_per_run, append,
                              lambda p, size=size: p.fill(size), fresh=True)
        what = (f"LangChain append one message, history {size:,}" if unit == "messages" else
                f"LangGraph put a checkpoint and its writes, thread of {size:,}")
        _report(ctx, section, what, ours, framework, rates)


def _report(ctx: BenchContext, section: str, operation: str, ours: list[Peer],
            framework: list[Peer], rates: dict[str, float]) -> None:
    """Each framework store beside the adapter's default (the issue's 0.7 target, as the
    hot-path rows compare the default with the best peer) and, for a store that fsyncs every
    commit, beside the adapter's strict durability (the equal-durability target, 1.0)."""
    by_durability = {player.fsyncs: player for player in ours}
    default = by_durability[False]
    for peer in framework:
        durable = "InMemory" not in peer.name
        ctx.row(section, operation, peer.name, rates[default.name], rates[peer.name],
                target=ADAPTER_TARGET if durable else None,
                note=f"ours = {default.name}; peer {1e6 / rates[peer.name]:,.0f} µs/op")
        if peer.fsyncs:
            strict = by_durability[True]
            ctx.row(section, operation, f"{peer.name}, equal durability", rates[strict.name],
                    rates[peer.name], target=STRICT_TARGET, note=f"ours = {strict.name}")
