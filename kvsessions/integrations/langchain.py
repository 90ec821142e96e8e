"""LangChain's chat history on kvsessions: ``KVSessionsChatMessageHistory``, a
``BaseChatMessageHistory``.

``pip install 'kvsessions[langchain]'``; the one line an application changes::

    history = KVSessionsChatMessageHistory(session_id, "redis://cache:6379/0")
    # was: SQLChatMessageHistory(session_id, connection="sqlite:///chat.db")

One LangChain history is one kvsessions session (its id is the history's ``session_id``), each
LangChain message one message document of it: the role from the message's type (human ->
user, ai -> assistant, system, tool and function -> tool, chat -> its role when kvsessions
knows it), the text as content, and the LangChain message (``message_to_dict``, less the fields
at their defaults and, when it is text, the content the document already holds) in the metadata
under ``"langchain"``, so it comes back exactly, tool calls and all. So ``kvsessions
show``, ``export`` and ``migrate`` work on these histories, and a session written by kvsessions
itself reads as a LangChain history.

Adding is ``SessionStorage.append_messages`` (the session is created on first use): one head
update per call whatever the history's length, nothing lost beside concurrent writers in other
processes. ``clear`` is ``clear_messages``: the session and its metadata stay, the count is
exact. The async methods are native; the sync ones work inside and outside a running event loop
(see ``kvsessions.integrations.store_loop``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from kvsessions.documents.models import MESSAGE_ROLES, ChatMessage, ChatSession
from kvsessions.errors import MissingDependencyError, SessionNotFoundError, ValidationError
from kvsessions.integrations.store_loop import StorageTarget, StoreLoop, storage_for

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        HumanMessage,
        SystemMessage,
        messages_from_dict,
    )
    from langchain_core.messages import ChatMessage as LangChainChatMessage
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingDependencyError("langchain-core", "langchain",
                                 purpose="kvsessions.integrations.langchain") from exc

__all__ = ["METADATA_KEY", "KVSessionsChatMessageHistory", "from_kvsessions", "to_kvsessions"]

#: Where a message document keeps the LangChain message it was made from.
METADATA_KEY = "langchain"
#: The kvsessions role of each LangChain message type (chunks included).
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool",
          "function": "tool", "developer": "system"}
#: LangChain messages for sessions written without LangChain (no ``"langchain"`` metadata).
_PLAIN: dict[str, type[BaseMessage]] = {"user": HumanMessage, "assistant": AIMessage,
                                        "system": SystemMessage}


def to_kvsessions(session_id: str, message: BaseMessage) -> ChatMessage:
    """The message document a LangChain message is stored as (see the module docstring)."""
    kind = message.type.lower().removesuffix("messagechunk")
    role = _ROLES.get(kind)
    if role is None:
        custom = getattr(message, "role", None)
        role = custom if custom in MESSAGE_ROLES else "user"
    try:
        fields = message.model_dump(mode="json", exclude_defaults=True)
        data = orjson.loads(orjson.dumps({"type": message.type, "data": fields}))
    except (TypeError, ValueError) as exc:  # pydantic's serialization error is a ValueError
        raise ValidationError(f"a LangChain message that is not JSON: {exc}",
                              path=f"metadata/{METADATA_KEY}", kind="message") from None
    content = _text(message.content)
    if isinstance(message.content, str):
        del data["data"]["content"]  # the document's content holds it
    return ChatMessage.create(session_id, role, content, {METADATA_KEY: data})


def from_kvsessions(message: ChatMessage) -> BaseMessage:
    """The LangChain message a message document stands for: the one stored with it, or, for
    a message not written through LangChain, one made from its role and content."""
    stored = message.metadata.get(METADATA_KEY)
    if isinstance(stored, dict) and isinstance(stored.get("data"), dict):
        data = stored["data"]
        if "content" not in data:
            stored = {**stored, "data": {**data, "content": message.content}}
        restored: BaseMessage = messages_from_dict([stored])[0]
        return restored
    plain = _PLAIN.get(message.role)
    if plain is not None:
        made: BaseMessage = plain(content=message.content)
        return made
    return LangChainChatMessage(role=message.role, content=message.content)


def _text(content: str | list[Any]) -> str:
    """A message's text for ``kvsessions show`` and exports: the content when it is text,
    else its text parts (the whole content is in the metadata)."""
    if isinstance(content, str):
        return content
    parts = [part if isinstance(part, str) else part.get("text", "")
             for part in content if isinstance(part, str | dict)]
    return "\n".join(part for part in parts if isinstance(part, str) and part)


class KVSessionsChatMessageHistory(BaseChatMessageHistory):
    """The messages of one kvsessions session, as a LangChain chat history.

    ``store`` is a store URL (the history opens the store, runs it on a thread of its own and
    closes it in ``close``), a ``SessionStorage`` or a ``KVStore`` (the caller's: never closed
    here). ``model`` and ``metadata`` describe the session when this history creates it.
    """

    def __init__(self, session_id: str, store: StorageTarget, *, model: str = "langchain",
                 metadata: dict[str, Any] | None = None) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise ValidationError(f"session_id must be a non-empty string, not {session_id!r}",
                                  path="session_id", kind="session")
        self.session_id = session_id
        self.storage, self._owned = storage_for(store)
        self._loop = StoreLoop(own_thread=self._owned)
        self._model = model
        self._metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.session_id!r}, {self.storage!r})"

    # ------------------------------------------------------------------ async (native)

    async def aget_messages(self) -> list[BaseMessage]:
        return await self._loop.run(self._get())

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await self._loop.run(self._add(messages))

    async def aclear(self) -> None:
        await self._loop.run(self._clear())

    async def aclose(self) -> None:
        """Close the store when the history opened it (from a URL)."""
        if self._owned:
            await self._loop.run(self.storage.close())
            self._loop.stop()

    # ------------------------------------------------------------------ sync

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The whole history, oldest first."""
        return self._loop.run_sync(self._get())

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        self._loop.run_sync(self._add(messages))

    def clear(self) -> None:
        self._loop.run_sync(self._clear())

    def close(self) -> None:
        if self._owned:
            self._loop.run_sync(self.storage.close())
            self._loop.stop()

    # ------------------------------------------------------------------ work on the home loop

    async def _get(self) -> list[BaseMessage]:
        return [from_kvsessions(message)
                for message in await self.storage.load_messages(self.session_id)]

    async def _add(self, messages: Sequence[BaseMessage]) -> None:
        documents = [to_kvsessions(self.session_id, message) for message in messages]
        if not documents:
            return
        try:
            await self.storage.append_messages(self.session_id, documents)
        except SessionNotFoundError:
            session = ChatSession.create(self._model, self._metadata)
            session.session_id = self.session_id
            await self.storage.save_session(session)  # another process may create it too
            await self.storage.append_messages(self.session_id, documents)

    async def _clear(self) -> None:
        await self.storage.clear_messages(self.session_id)
