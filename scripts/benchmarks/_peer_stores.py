"""The session stores the peers section drives: kvsessions and each framework's own store, each
through its public API, behind one small interface (``Peer``). Setup-only bulk writes are the one
place that writes a peer's rows directly; see ``ADK``. Not a section: bench.py skips ``_`` names.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvsessions import ChatMessage, ChatSession, SessionStorage

REDIS_URL = os.environ.get("KVSESSIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MESSAGE_BYTES = 200
APP, USER = "bench", "user"


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
    backend = "sqlite"  #: what ``--only`` picks it by: "sqlite" (files on disk) or "redis"
    fsyncs = False  #: every commit is fsynced
    per_message = True  #: one row or item per message (not one document per session)
    kvsessions = False
    adapts: str | None = None  #: a kvsessions adapter: the name of the store it replaces

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
    """kvsessions' ``SessionStorage`` on the store a URL names (one namespace per scope)."""

    kvsessions = True

    def __init__(self, name: str, url: Callable[[Path, str], str], fsyncs: bool,
                 backend: str = "sqlite") -> None:
        self.name, self._url, self.fsyncs, self.backend = name, url, fsyncs, backend

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        self._folder, self._stack = folder, stack
        self.storage = await self._storage("peers")

    async def _storage(self, namespace: str) -> Any:
        storage = SessionStorage.from_url(self._url(self._folder, namespace))
        await storage.initialize()
        self._stack.push_async_callback(storage.close)
        return storage

    async def fill(self, messages: int) -> Any:
        session = ChatSession.create("bench")
        for i in range(messages):
            session.add_message(role(i), text(i))
            if i % 1000 == 999:
                await self.storage.save_session(session)
        await self.storage.save_session(session)
        return session.session_id

    async def append(self, session: Any, i: int) -> None:
        await self.storage.append_message(session, ChatMessage.create(session, role(i), text(i)))

    async def load(self, session: Any) -> int:
        return len((await self.storage.load_session(session)).messages)

    async def latest(self, session: Any, count: int) -> int | None:
        return len(await self.storage.load_messages(session, limit=count))

    async def create(self, i: int) -> None:
        session = ChatSession.create("bench")
        for j in range(5):
            session.add_message(role(j), text(i))
        await self.storage.save_session(session)

    async def fill_sessions(self, count: int) -> Any:
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
    backend = "redis"

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from agents.extensions.memory import RedisSession
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)
        stack.push_async_callback(client.aclose)
        prefix = "bench_peers_openai_" + uuid.uuid4().hex[:8]
        stack.push_async_callback(drop_redis_keys, client, prefix + ":*")
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


async def drop_redis_keys(client: Any, pattern: str) -> None:
    keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start:start + 1000])


# ---------------------------------------------------------------------- the adapters

class OpenAIAdapter(OpenAISQLite):
    """kvsessions' ``OpenAIAgentsSession`` on kvsessions' SQLite store, set against the SDK's
    ``SQLiteSession`` (``adapts``): the same calls, the same items."""

    package, kvsessions, adapts = "openai-agents", True, "OpenAI SQLiteSession"

    def __init__(self, durability: str) -> None:
        self.durability, self.fsyncs = durability, durability == "strict"
        self.name = f"kvsessions OpenAIAgentsSession sqlite {durability}"

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        from kvsessions.integrations.openai_agents import OpenAIAgentsSession

        storage = SessionStorage.from_url(
            f"sqlite:///{folder / f'adapter_openai_{self.durability}.db'}"
            f"?durability={self.durability}")
        await storage.initialize()
        stack.push_async_callback(storage.close)
        self._new = lambda: OpenAIAgentsSession(uuid.uuid4().hex, storage)
        self._sessions = []

    async def create(self, i: int) -> None:
        await self._new().add_items([item(j) for j in range(5)])


class ADKAdapter(ADK):
    """kvsessions' ``KVSessionService`` on kvsessions' SQLite store, set against ADK's
    ``SqliteSessionService`` (``adapts``)."""

    package, kvsessions, adapts = "google-adk", True, "ADK SqliteSessionService"

    def __init__(self, durability: str) -> None:
        self.durability, self.fsyncs, self.database = durability, durability == "strict", False
        self.name = f"kvsessions KVSessionService sqlite {durability}"

    async def open(self, folder: Path, stack: AsyncExitStack) -> None:
        await super().open(folder, stack)  # the event maker; its own service stays unused
        from kvsessions.integrations.adk import KVSessionService

        self.storage = SessionStorage.from_url(
            f"sqlite:///{folder / f'adapter_adk_{self.durability}.db'}"
            f"?durability={self.durability}")
        await self.storage.initialize()
        stack.push_async_callback(self.storage.close)
        self.service = KVSessionService(self.storage)

    async def fill(self, messages: int) -> Any:
        """The messages ``append_event`` would store, in one ``append_messages`` call."""
        from kvsessions.integrations.adk import event_message, stored_id

        session = await self.service.create_session(app_name=APP, user_id=USER)
        key = stored_id(APP, USER, session.id)
        start = time.time() - messages * 1e-3
        await self.storage.append_messages(key, [
            event_message(key, self._event(i, timestamp=start + i * 1e-3))
            for i in range(messages)])
        return await self._get(session.id)

    async def fill_sessions(self, count: int) -> Any:
        user = "lists_" + uuid.uuid4().hex[:8]
        for _ in range(count):
            await self.service.create_session(app_name=APP, user_id=user)
        return user
