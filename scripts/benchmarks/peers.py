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
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchContext

SECTION = "peers"
REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MESSAGE_BYTES = 200
APP, USER = "bench", "user"
#: Targets of the hot-path issue: kvsessions' time over the best peer's.
APPEND_TARGET, LOAD_TARGET, DOCUMENT_LOAD_TARGET = 0.5, 0.6, 1.5
LATEST_TARGET, CREATE_TARGET, STRICT_TARGET = 0.5, 0.5, 1.0


def text(i: int) -> str:
    return f"message {i} ".ljust(MESSAGE_BYTES, "x")


def role(i: int) -> str:
    return "user" if i % 2 == 0 else "assistant"


def item(i: int) -> dict[str, Any]:
    """A message as the OpenAI Agents SDK and the DiskStore document keep it."""
    return {"role": role(i), "content": text(i)}


# ---------------------------------------------------------------------- the contestants

class Peer:
    """One session store, driven through its public API. A method a store lacks returns None."""

    name = ""
    package = ""
    fsyncs = False  #: every commit is fsynced
    per_message = True  #: one row or item per message (not one document per session)
    kvsessions = False

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        raise NotImplementedError

    async def fill(self, messages: int) -> Any:
        """A session holding ``messages`` messages (setup, not timed)."""
        raise NotImplementedError

    async def append(self, session: Any, i: int) -> None:
        raise NotImplementedError

    async def load(self, session: Any) -> int:
        raise NotImplementedError

    async def latest(self, session: Any, count: int) -> int | None:
        return None

    async def create(self, i: int) -> None:
        raise NotImplementedError

    async def fill_sessions(self, count: int) -> Any:
        """A scope holding exactly ``count`` sessions, or None where the store cannot list."""
        return None

    async def list(self, scope: Any, count: int) -> int:
        raise NotImplementedError


class KVSessions(Peer):
    kvsessions = True

    def __init__(self, name: str, url: Callable[[Path, str], str], fsyncs: bool) -> None:
        self.name, self._url, self.fsyncs = name, url, fsyncs

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        self._folder, self._stack = folder, stack
        self.storage = await self._storage("peers")

    async def _storage(self, namespace: str) -> Any:
        from kvsessions import SessionStorage

        storage = SessionStorage.from_url(self._url(self._folder, namespace))
        await storage.initialize()
        self._stack.push_async_callback(storage.close)
        return storage

    async def fill(self, messages: int) -> Any:
        from kvsessions import ChatSession

        session = ChatSession.create("bench")
        for i in range(messages):
            session.add_message(role(i), text(i))
            if i % 1000 == 999:
                await self.storage.save_session(session)
        await self.storage.save_session(session)
        return session.session_id

    async def append(self, session: Any, i: int) -> None:
        from kvsessions import ChatMessage

        await self.storage.append_message(session, ChatMessage.create(session, role(i), text(i)))

    async def load(self, session: Any) -> int:
        return len((await self.storage.load_session(session)).messages)

    async def latest(self, session: Any, count: int) -> int | None:
        return len(await self.storage.load_messages(session, limit=count))

    async def create(self, i: int) -> None:
        from kvsessions import ChatSession

        session = ChatSession.create("bench")
        for j in range(5):
            session.add_message(role(j), text(i))
        await self.storage.save_session(session)

    async def fill_sessions(self, count: int) -> Any:
        from kvsessions import ChatSession

        storage = await self._storage("lists_" + uuid.uuid4().hex[:8])
        for _ in range(count):
            await storage.save_session(ChatSession.create("bench"))
        return storage

    async def list(self, scope: Any, count: int) -> int:
        return len(await scope.list_sessions(limit=count))


class OpenAISQLite(Peer):
    name, package, fsyncs = "OpenAI SQLiteSession", "openai-agents", True

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from agents import SQLiteSession

        self._new = lambda: SQLiteSession(uuid.uuid4().hex, folder / "openai.db")
        self._sessions: list[Any] = []
        stack.callback(lambda: [session.close() for session in self._sessions])

    async def fill(self, messages: int) -> Any:
        session = self._new()
        self._sessions.append(session)
        await session.add_items([item(i) for i in range(messages)])
        return session

    async def append(self, session: Any, i: int) -> None:
        await session.add_items([item(i)])

    async def load(self, session: Any) -> int:
        return len(await session.get_items())

    async def latest(self, session: Any, count: int) -> int | None:
        return len(await session.get_items(limit=count))

    async def create(self, i: int) -> None:
        session = self._new()
        await session.add_items([item(j) for j in range(5)])
        session.close()


class OpenAIRedis(OpenAISQLite):
    name, package, fsyncs = "OpenAI RedisSession", "openai-agents[redis]", False

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from agents.extensions.memory import RedisSession
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)
        stack.push_async_callback(client.aclose)
        prefix = "bench_peers_openai_" + uuid.uuid4().hex[:8]
        stack.push_async_callback(_drop_redis_keys, client, prefix + ":*")
        self._new = lambda: RedisSession(uuid.uuid4().hex, redis_client=client, key_prefix=prefix)
        self._sessions = []

    async def create(self, i: int) -> None:
        await self._new().add_items([item(j) for j in range(5)])


class LangChainSQL(Peer):
    name, package, fsyncs = "LangChain SQLChatMessageHistory", "langchain-community", True

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from langchain_community.chat_message_histories import SQLChatMessageHistory
        from langchain_core.messages import AIMessage, HumanMessage
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(f"sqlite+aiosqlite:///{folder / 'langchain.db'}")
        stack.push_async_callback(engine.dispose)
        self._new = lambda: SQLChatMessageHistory(session_id=uuid.uuid4().hex, connection=engine)
        self._message = lambda i: (HumanMessage if i % 2 == 0 else AIMessage)(content=text(i))

    async def fill(self, messages: int) -> Any:
        history = self._new()
        await history.aadd_messages([self._message(i) for i in range(messages)])
        return history

    async def append(self, session: Any, i: int) -> None:
        await session.aadd_messages([self._message(i)])

    async def load(self, session: Any) -> int:
        return len(await session.aget_messages())

    async def create(self, i: int) -> None:
        await self._new().aadd_messages([self._message(j) for j in range(5)])


class ADK(Peer):
    """Both ADK services share the API; only the setup's bulk write differs."""

    package, fsyncs = "google-adk", True

    def __init__(self, database: bool) -> None:
        self.database = database
        self.name = "ADK " + ("DatabaseSessionService" if database else "SqliteSessionService")

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from google.adk.events import Event
        from google.genai import types

        self._path = folder / ("adk_database.db" if self.database else "adk_sqlite.db")
        if self.database:
            from google.adk.sessions import DatabaseSessionService

            self.service: Any = DatabaseSessionService(f"sqlite+aiosqlite:///{self._path}")
        else:
            from google.adk.sessions.sqlite_session_service import SqliteSessionService

            self.service = SqliteSessionService(str(self._path))
        stack.push_async_callback(self.service.close)
        self._event = lambda i, **extra: Event(
            invocation_id="bench", author=role(i), **extra,
            content=types.Content(role="user" if i % 2 == 0 else "model",
                                  parts=[types.Part(text=text(i))]))

    async def fill(self, messages: int) -> Any:
        session = await self.service.create_session(app_name=APP, user_id=USER)
        start = time.time() - messages * 1e-3
        events = [self._event(i, timestamp=start + i * 1e-3) for i in range(messages)]
        await (self._bulk_database if self.database else self._bulk_sqlite)(session, events)
        return await self._get(session.id)

    async def _bulk_sqlite(self, session: Any, events: list[Any]) -> None:
        """The rows SqliteSessionService.append_event writes, in one transaction."""
        import aiosqlite

        async with aiosqlite.connect(self._path) as db:
            await db.executemany(
                "INSERT INTO events (id, app_name, user_id, session_id, invocation_id, "
                "timestamp, event_data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.id, APP, USER, session.id, e.invocation_id, e.timestamp,
                  e.model_dump_json(exclude_none=True)) for e in events])
            await db.execute("UPDATE sessions SET update_time = ? WHERE app_name = ? AND "
                             "user_id = ? AND id = ?", (time.time(), APP, USER, session.id))
            await db.commit()

    async def _bulk_database(self, session: Any, events: list[Any]) -> None:
        """The event rows DatabaseSessionService.append_event adds, in one transaction."""
        schema = self.service._get_schema_classes()
        async with self.service.database_session_factory() as sql:
            sql.add_all([schema.StorageEvent.from_event(session, event) for event in events])
            await sql.commit()

    async def _get(self, session_id: str, recent: int | None = None) -> Any:
        from google.adk.sessions.base_session_service import GetSessionConfig

        config = None if recent is None else GetSessionConfig(num_recent_events=recent)
        return await self.service.get_session(app_name=APP, user_id=USER,
                                              session_id=session_id, config=config)

    async def append(self, session: Any, i: int) -> None:
        await self.service.append_event(session, self._event(i))

    async def load(self, session: Any) -> int:
        return len((await self._get(session.id)).events)

    async def latest(self, session: Any, count: int) -> int | None:
        return len((await self._get(session.id, count)).events)

    async def create(self, i: int) -> None:
        session = await self.service.create_session(app_name=APP, user_id=USER)
        for j in range(5):
            await self.service.append_event(session, self._event(j))

    async def fill_sessions(self, count: int) -> Any:
        """One session through ``create_session`` (it makes the state rows), the others as the
        rows it writes, in one transaction."""
        user = "lists_" + uuid.uuid4().hex[:8]
        await self.service.create_session(app_name=APP, user_id=user)
        ids = [uuid.uuid4().hex for _ in range(count - 1)]
        if self.database:
            schema = self.service._get_schema_classes()
            now = datetime.now(UTC)
            if self.service._uses_naive_datetime():
                now = now.replace(tzinfo=None)
            async with self.service.database_session_factory() as sql:
                sql.add_all([schema.StorageSession(app_name=APP, user_id=user, id=id_, state={},
                                                   create_time=now, update_time=now)
                             for id_ in ids])
                await sql.commit()
        else:
            import aiosqlite

            now = time.time()
            async with aiosqlite.connect(self._path) as db:
                await db.executemany(
                    "INSERT INTO sessions (app_name, user_id, id, state, create_time, "
                    "update_time) VALUES (?, ?, ?, '{}', ?, ?)",
                    [(APP, user, id_, now, now) for id_ in ids])
                await db.commit()
        return user

    async def list(self, scope: Any, count: int) -> int:
        return len((await self.service.list_sessions(app_name=APP, user_id=scope)).sessions)


class DiskStore(Peer):
    name, package, per_message = "py-key-value DiskStore", "py-key-value-aio[disk]", False

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from key_value.aio.stores.disk import DiskStore as Store

        self.store = await stack.enter_async_context(Store(directory=folder / "diskstore"))

    async def fill(self, messages: int) -> Any:
        key = uuid.uuid4().hex
        await self.store.put(key, {"messages": [item(i) for i in range(messages)]})
        return key

    async def append(self, session: Any, i: int) -> None:
        """Read, add, write back: the whole document, as a one-document store must."""
        document = await self.store.get(session)
        document["messages"].append(item(i))
        await self.store.put(session, document)

    async def load(self, session: Any) -> int:
        return len((await self.store.get(session))["messages"])

    async def latest(self, session: Any, count: int) -> int | None:
        return len((await self.store.get(session))["messages"][-count:])

    async def create(self, i: int) -> None:
        await self.store.put(uuid.uuid4().hex, {"messages": [item(j) for j in range(5)]})


async def _drop_redis_keys(client: Any, pattern: str) -> None:
    keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start:start + 1000])


def _sqlite_url(durability: str) -> Callable[[Path, str], str]:
    """Each durability in its own file, as each peer has its own."""
    return lambda folder, ns: (f"sqlite:///{folder / f'kvsessions_{durability}.db'}"
                               f"?namespace={ns}&durability={durability}")


def contestants(redis_up: bool, tag: str) -> list[Peer]:
    """kvsessions' three setups and every peer whose package is installed."""
    ours: list[Peer] = [KVSessions("kvsessions sqlite", _sqlite_url("normal"), False),
                        KVSessions("kvsessions sqlite strict", _sqlite_url("strict"), True)]
    if redis_up:
        ours.append(KVSessions("kvsessions redis",
                               lambda _, ns: f"{REDIS_URL}?namespace=bench_peers_{tag}_{ns}",
                               False))
    peers: list[tuple[Peer, list[str]]] = [
        (OpenAISQLite(), ["agents"]),
        (OpenAIRedis(), ["agents", "redis"]),
        (LangChainSQL(), ["langchain_community", "sqlalchemy", "aiosqlite", "greenlet"]),
        (ADK(database=False), ["google.adk"]),
        (ADK(database=True), ["google.adk", "sqlalchemy", "greenlet"]),
        (DiskStore(), ["key_value.aio", "diskcache"]),
    ]
    for peer, modules in peers:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            print(f"peers: {peer.name} skipped: {peer.package} is not installed "
                  f"(pip install -e '.[bench]')", flush=True)
        elif isinstance(peer, OpenAIRedis) and not redis_up:
            print(f"peers: {peer.name} skipped: no Redis at {REDIS_URL}", flush=True)
        else:
            ours.append(peer)
    return ours


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
        ours = ("kvsessions redis" if "Redis" in peer.name else
                "kvsessions sqlite strict" if peer.fsyncs else "kvsessions sqlite")
        if ours not in rates:
            continue
        loads_document = operation.startswith("load") and not peer.per_message
        ctx.row(SECTION, operation, peer.name, rates[ours], rates[peer.name],
                target=DOCUMENT_LOAD_TARGET if loads_document else None,
                note=f"ours = {ours}; peer {1e6 / rates[peer.name]:,.0f} µs/op")
    local = [p for p in peers if "Redis" not in p.name
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
    redis_up = await _redis_up()
    if not redis_up:
        print(f"peers: Redis rows skipped: no Redis at {REDIS_URL}", flush=True)
    players = contestants(redis_up, tag)
    print(f"peers: SQLite {sqlite3.sqlite_version}, a new connection's synchronous = "
          f"{_default_synchronous()} (2 = FULL: an fsync per commit)", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-peers-"))
    async with AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, folder, True)
        if redis_up:
            from redis.asyncio import Redis

            client = Redis.from_url(REDIS_URL)
            stack.push_async_callback(client.aclose)
            stack.push_async_callback(_drop_redis_keys, client, f"kvs:{{bench_peers_{tag}_*")
        for player in players:
            await player.open(folder, stack)
        await bench(ctx, players)
        print("peers: journal modes: " + ", ".join(
            f"{path.name} {_journal_mode(path)}" for path in sorted(folder.rglob("*.db"))),
            flush=True)


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
