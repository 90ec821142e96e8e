"""kvsessions beside the session stores of other frameworks: the same workload, in the same run.

Peers (``pip install -e '.[bench]'``; each one not installed is skipped with a one-line note):
OpenAI Agents SDK ``SQLiteSession`` and ``RedisSession``, LangChain's ``SQLChatMessageHistory``
(SQLAlchemy + aiosqlite), Google ADK's ``SqliteSessionService`` and ``DatabaseSessionService``
(SQLAlchemy + aiosqlite), and py-key-value's ``DiskStore``, which keeps a whole session as one
document. Each is driven through its public API as its docs show; every SQLite database lives in
a temporary folder on disk, Redis keys under a unique prefix, removed at the end.

Workload, 200-byte messages: append one message at history 10 / 1,000 / 10,000 (each repeat
starts from a fresh session when the appends would grow it by more than a tenth), load a
1,000- and a 10,000-message session, the latest 50 of 10,000, create a session with 5 messages
(for the OpenAI and LangChain stores that includes building the session object, as an
application does per conversation), list 1,000 sessions (only kvsessions and ADK can list).
Contestants run in turn within each repeat; the median of the repeats is kept. Setup is never
timed: sessions are filled through each store's own bulk call where it has one (ADK has none:
its rows are written in one transaction as its ``append_event`` writes them, then read back
through ``get_session``).

Durability, checked on this machine (SQLite's compiled default is ``synchronous=FULL``):

* kvsessions SQLite: WAL, ``synchronous=NORMAL`` (no fsync per commit); ``?durability=strict``
  is WAL with ``FULL``: the WAL is fsynced at every commit.
* OpenAI ``SQLiteSession``: WAL, ``synchronous`` left at FULL: an fsync per commit.
* LangChain ``SQLChatMessageHistory`` and both ADK services: rollback journal (``DELETE``) with
  FULL: the journal and the database are fsynced at every commit. ADK's ``SqliteSessionService``
  also opens a new aiosqlite connection (a new thread) for every call.
* ``DiskStore`` (diskcache): WAL, ``synchronous=NORMAL``, as kvsessions' default.
* Redis: both kvsessions and ``RedisSession`` write to the same server; its persistence applies
  to both alike.

So each row prints every peer beside the kvsessions of equal durability (strict beside the
peers that fsync, the default beside ``DiskStore``, Redis beside ``RedisSession``), then
kvsessions' default against the fastest SQLite/disk peer and strict against the fastest peer
that fsyncs, with the targets of the hot-path issue. Ratio = kvsessions' time / the peer's
time: below 1 means kvsessions is faster.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from benchmarks._langchain_langgraph import bench as adapter_rows
from benchmarks._peer_stores import (
    ADK,
    REDIS_URL,
    ADKAdapter,
    DiskStore,
    KVSessions,
    LangChainSQL,
    OpenAIAdapter,
    OpenAIRedis,
    OpenAISQLite,
    Peer,
    drop_redis_keys,
)
from benchmarks.harness import BenchContext

SECTION = "peers"
#: Targets of the hot-path issue: kvsessions' time over the best peer's.
APPEND_TARGET, LOAD_TARGET, DOCUMENT_LOAD_TARGET = 0.5, 0.6, 1.5
#: The integrations issue: each adapter's time over its framework's own store, on append and
#: load.
ADAPTER_TARGET = 0.7
LATEST_TARGET, CREATE_TARGET, STRICT_TARGET = 0.5, 0.5, 1.0


def _sqlite_url(durability: str) -> Callable[[Path, str], str]:
    """Each durability in its own file, as each peer has its own."""
    return lambda folder, ns: (f"sqlite:///{folder / f'kvsessions_{durability}.db'}"
                               f"?namespace={ns}&durability={durability}")


def contestants(ctx: BenchContext, redis_up: bool, tag: str) -> list[Peer]:
    """kvsessions' three setups and every peer whose package is installed (of the backends
    ``--only`` names, when it names any)."""
    ours: list[Peer] = [KVSessions("kvsessions sqlite", _sqlite_url("normal"), False),
                        KVSessions("kvsessions sqlite strict", _sqlite_url("strict"), True)]
    if redis_up:
        ours.append(KVSessions("kvsessions redis",
                               lambda _, ns: f"{REDIS_URL}?namespace=bench_peers_{tag}_{ns}",
                               False, backend="redis"))
    peers: list[tuple[Peer, list[str]]] = [
        (OpenAISQLite(), ["agents"]),
        (OpenAIRedis(), ["agents", "redis"]),
        (LangChainSQL(), ["langchain_community", "sqlalchemy", "aiosqlite", "greenlet"]),
        (ADK(database=False), ["google.adk"]),
        (ADK(database=True), ["google.adk", "sqlalchemy", "greenlet"]),
        (DiskStore(), ["key_value.aio", "diskcache"]),
        (OpenAIAdapter("normal"), ["agents"]),
        (OpenAIAdapter("strict"), ["agents"]),
        (ADKAdapter("normal"), ["google.adk"]),
        (ADKAdapter("strict"), ["google.adk"]),
    ]
    for peer, modules in peers:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            print(f"peers: {peer.name} skipped: {peer.package} is not installed "
                  f"(pip install -e '.[bench]')", flush=True)
        elif peer.backend == "redis" and not ctx.wanted("redis"):
            continue  # --only names other backends: nothing to say
        elif peer.backend == "redis" and not redis_up:
            print(f"peers: {peer.name} skipped: no Redis at {REDIS_URL}", flush=True)
        else:
            ours.append(peer)
    return [player for player in ours if ctx.wanted(player.backend)]


# ---------------------------------------------------------------------- timing and rows

Run = Callable[[Peer, Any], Awaitable[None]]


async def measure(ctx: BenchContext, players: list[Peer], operations: int, run: Run,
                  setup: Callable[[Peer], Awaitable[Any]], *, fresh: bool) -> dict[str, float]:
    """Median operations/s of each player, the players taking turns within every repeat.
    ``fresh``: a new setup before every repeat; otherwise one per player."""
    rates: dict[str, list[float]] = {player.name: [] for player in players}
    states: dict[str, Any] = {}
    for _ in range(ctx.repeats):
        for player in players:
            if fresh or player.name not in states:
                states[player.name] = await setup(player)
            start = time.perf_counter()
            await run(player, states[player.name])
            rates[player.name].append(operations / (time.perf_counter() - start))
    return {name: statistics.median(found) for name, found in rates.items()}


def report(ctx: BenchContext, operation: str, players: list[Peer], rates: dict[str, float],
           target: float | None) -> None:
    """Every peer beside the kvsessions of equal durability, then the best-peer ratios."""
    peers = [p for p in players if not p.kvsessions and p.name in rates]
    for peer in peers:
        ours = ("kvsessions redis" if peer.backend == "redis" else
                "kvsessions sqlite strict" if peer.fsyncs else "kvsessions sqlite")
        if ours not in rates:
            continue
        loads_document = operation.startswith("load") and not peer.per_message
        ctx.row(SECTION, operation, peer.name, rates[ours], rates[peer.name],
                target=DOCUMENT_LOAD_TARGET if loads_document else None,
                note=f"ours = {ours}; peer {1e6 / rates[peer.name]:,.0f} µs/op")
    for adapter in [p for p in players if p.adapts is not None and p.name in rates]:
        if adapter.adapts in rates:
            graded = operation.startswith(("append", "load"))
            ctx.row(SECTION, operation, f"{adapter.name} / {adapter.adapts}", rates[adapter.name],
                    rates[adapter.adapts], target=ADAPTER_TARGET if graded else None,
                    note="the adapter beside the framework's own store")
    local = [p for p in peers if p.backend == "sqlite"
             and (p.per_message or not operation.startswith("load"))]
    for label, ours, candidates, goal in (
            ("best peer", "kvsessions sqlite", local, target),
            ("best fsync peer", "kvsessions sqlite strict", [p for p in local if p.fsyncs],
             STRICT_TARGET)):
        if not candidates or ours not in rates:
            continue
        best = max(candidates, key=lambda p: rates[p.name])
        ctx.row(SECTION, operation, f"{label}: {best.name}", rates[ours], rates[best.name],
                target=goal, note=f"ours = {ours}")


async def run(ctx: BenchContext) -> None:
    tag = uuid.uuid4().hex[:8]
    redis_up = ctx.wanted("redis") and await _redis_up()
    if ctx.wanted("redis") and not redis_up:
        print(f"peers: Redis rows skipped: no Redis at {REDIS_URL}", flush=True)
    players = contestants(ctx, redis_up, tag)
    if ctx.wanted("sqlite"):
        print(f"peers: SQLite {sqlite3.sqlite_version}, a new connection's synchronous = "
              f"{_default_synchronous()} (2 = FULL: an fsync per commit)", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-peers-"))
    async with AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, folder, True)
        if redis_up:
            from redis.asyncio import Redis

            client = Redis.from_url(REDIS_URL)
            stack.push_async_callback(client.aclose)
            stack.push_async_callback(drop_redis_keys, client, f"kvs:{{bench_peers_{tag}_*")
        for player in players:
            await player.open(folder, stack)
        await bench(ctx, players)
        await adapter_rows(ctx, folder, stack)  # LangChain and LangGraph adapters (issue 17)
        databases = sorted(folder.rglob("*.db"))
        if databases:
            print("peers: journal modes: " + ", ".join(
                f"{path.name} {_journal_mode(path)}" for path in databases), flush=True)


async def bench(ctx: BenchContext, players: list[Peer]) -> None:
    big, mid = max(50, ctx.n(10_000)), max(10, ctx.n(1000))
    filled: dict[tuple[str, int], Any] = {}

    async def session_of(size: int, player: Peer) -> Any:
        if (player.name, size) not in filled:
            filled[player.name, size] = await player.fill(size)
        return filled[player.name, size]

    for size in (mid, big):
        loads = max(2, ctx.n(10_000 // size * 2))

        async def load(player: Peer, session: Any, size: int = size, loads: int = loads) -> None:
            for _ in range(loads):
                assert await player.load(session) == size

        rates = await measure(ctx, players, loads, load,
                              lambda p, size=size: session_of(size, p), fresh=False)
        report(ctx, f"load {size:,} messages", players, rates, LOAD_TARGET)

    reads = ctx.n(100)
    windowed = [p for p in players if type(p).latest is not Peer.latest]

    async def latest(player: Peer, session: Any) -> None:
        for _ in range(reads):
            assert await player.latest(session, 50) == 50

    rates = await measure(ctx, windowed, reads, latest, lambda p: session_of(big, p),
                          fresh=False)
    report(ctx, f"latest 50 of {big:,}", windowed, rates, LATEST_TARGET)

    appends = ctx.n(50)
    for size in (10, mid, big):
        async def append(player: Peer, session: Any) -> None:
            for i in range(appends):
                await player.append(session, i)

        fresh = appends * ctx.repeats * 10 > size
        setup = (lambda p, size=size: p.fill(size)) if fresh else (
            lambda p, size=size: session_of(size, p))
        rates = await measure(ctx, players, appends, append, setup, fresh=fresh)
        report(ctx, f"append one message, history {size:,}", players, rates, APPEND_TARGET)

    creates = ctx.n(20)

    async def create(player: Peer, _: Any) -> None:
        for i in range(creates):
            await player.create(i)

    rates = await measure(ctx, players, creates, create, _nothing, fresh=False)
    report(ctx, "create a session with 5 messages", players, rates, CREATE_TARGET)

    count, lists = max(10, ctx.n(1000)), max(2, ctx.n(5))
    listing = [p for p in players if type(p).fill_sessions is not Peer.fill_sessions]

    async def list_all(player: Peer, scope: Any) -> None:
        for _ in range(lists):
            assert await player.list(scope, count) == count

    rates = await measure(ctx, listing, lists, list_all,
                          lambda p: p.fill_sessions(count), fresh=False)
    report(ctx, f"list {count:,} sessions", listing, rates, None)


async def _nothing(_: Peer) -> None:
    return None


async def _redis_up() -> bool:
    if importlib.util.find_spec("redis") is None:
        return False
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except Exception:  # redis-py's ConnectionError and timeouts: no server to bench on
        return False
    finally:
        await client.aclose()


def _default_synchronous() -> int:
    with tempfile.TemporaryDirectory() as folder:
        connection = sqlite3.connect(Path(folder) / "probe.db")
        try:
            return int(connection.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            connection.close()


def _journal_mode(path: Path) -> str:
    """The journal mode a database file is in (WAL is recorded in the file; else DELETE)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        connection.close()
