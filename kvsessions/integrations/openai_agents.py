"""The OpenAI Agents SDK ``Session`` on kvsessions: ``Runner.run(agent, text, session=...)``
keeps its conversation on any store kvsessions runs on
(``pip install 'kvsessions[openai-agents]'``).

Each item the SDK adds becomes one kvsessions message document of the session ``session_id``:
its role (``user``, ``assistant``, ``system``; ``developer`` is kept as ``system``; tool results
as ``tool``, other items such as function calls and reasoning as ``assistant``), its text as the
content (so ``kvsessions show`` and ``export`` read the conversation), and the whole item in the
message's metadata under ``openai_agents_item``, which is what ``get_items`` returns: items
round-trip as the JSON they are. A message with no item in its metadata reads as
``{"role": ..., "content": ...}`` (a ``tool`` message as ``assistant``): one stored by other
kvsessions code, and a plain text message (an item that is exactly ``{"role": "user",
"content": "..."}``, or ``assistant`` or ``system``), whose role and content already are the
item, kept once, not twice.

The operations are ``SessionStorage``'s, so their guarantees are too: ``add_items`` stores the
items of one call with one head update (the session is created on the first call), concurrent
writers in any number of processes lose nothing and the count stays exact, ``pop_item`` never
returns one item to two callers, ``clear_session`` keeps the session itself (its head).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self, cast

from kvsessions.errors import MissingDependencyError, SessionNotFoundError

try:
    from agents.items import TResponseInputItem
    from agents.memory.session import SessionABC
    from agents.memory.session_settings import (
        SessionSettings,
        coerce_session_settings,
        resolve_session_limit,
    )
except ImportError as error:  # pragma: no cover - the extra is installed in the tests
    raise MissingDependencyError("openai-agents", "openai-agents",
                                 purpose="kvsessions.integrations.openai_agents") from error

from kvsessions.documents.models import ChatMessage, ChatSession, utc_now
from kvsessions.integrations.storage_source import StorageSource, session_storage
from kvsessions.sessions.message_documents import load_messages_as
from kvsessions.sessions.storage import SessionStorage

__all__ = ["ITEM_KEY", "OpenAIAgentsSession", "item_message", "message_item"]

#: The metadata key of a message that holds the SDK item it was made from.
ITEM_KEY = "openai_agents_item"
#: The model a session this adapter creates is stored with (what ``kvsessions ls`` shows).
DEFAULT_MODEL = "openai-agents"
#: How many times ``add_items`` creates a missing session before giving up (it fails only
#: while another process keeps deleting that session).
_CREATE_ATTEMPTS = 3


class OpenAIAgentsSession(SessionABC):
    """An SDK session whose items are kvsessions messages (see the module docstring).

    ``storage``: a store URL (opened here, closed by ``close()``), a ``SessionStorage`` or a
    ``KVStore`` (the caller's: ``close()`` leaves it open). ``store_options`` go to
    ``open_store`` with a URL. ``model`` and ``metadata`` are what a session created here is
    stored with.
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        storage: StorageSource,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        model: str = DEFAULT_MODEL,
        metadata: Mapping[str, Any] | None = None,
        **store_options: Any,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise TypeError(f"session_id must be a non-empty string, not {session_id!r:.60}")
        self.session_id = session_id
        self.session_settings = (coerce_session_settings(session_settings)
                                 if session_settings is not None else SessionSettings())
        self._storage, self._owns_storage = session_storage(storage, **store_options)
        self._model = model
        self._metadata = dict(metadata or {})

    @property
    def storage(self) -> SessionStorage:
        """The kvsessions storage this adapter reads and writes (from any event loop)."""
        return self._storage

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.session_id!r}, {self.storage!r})"

    # ------------------------------------------------------------------ the SDK protocol

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """All items in order, or the latest ``limit`` (default: ``session_settings.limit``)."""
        count = resolve_session_limit(limit, self.session_settings)
        if count is not None and count <= 0:
            return []
        return await load_messages_as(self.storage, self.session_id, document_item, limit=count)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Store the items, in order, after those stored before; the session is created by the
        first call. Every item is checked before anything is written."""
        if not items:
            return
        messages = [item_message(self.session_id, item) for item in items]
        for _ in range(_CREATE_ATTEMPTS):
            try:
                await self.storage.append_messages(self.session_id, messages)
                return
            except SessionNotFoundError:
                now = utc_now()
                await self.storage.insert_session(ChatSession(
                    session_id=self.session_id, model=self._model, created_at=now,
                    updated_at=now, metadata=dict(self._metadata)))
        await self.storage.append_messages(self.session_id, messages)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the latest item and return it; None when there is none."""
        message = await self.storage.pop_message(self.session_id)
        return None if message is None else message_item(message)

    async def clear_session(self) -> None:
        """Remove every item; the session itself stays (empty)."""
        await self.storage.clear_messages(self.session_id)

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Close the storage when it was made here from a URL; else leave it to its owner."""
        if self._owns_storage:
            await self._storage.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


# ---------------------------------------------------------------------- items <-> messages

def item_message(session_id: str, item: TResponseInputItem) -> ChatMessage:
    """The message document an item is stored as (see the module docstring)."""
    if not isinstance(item, Mapping):
        raise TypeError(f"an item is a dict, not {type(item).__name__}")
    fields = cast(Mapping[str, Any], item)
    role, text = _role(fields), _text(fields)
    if _is_plain(fields, role):
        return ChatMessage.create(session_id, role, text)
    return ChatMessage.create(session_id, role, text, {ITEM_KEY: dict(fields)})


def _is_plain(item: Mapping[str, Any], role: str) -> bool:
    """The item is exactly ``{"role": role, "content": text}`` with the role it is stored with:
    the message's role and content are the item, which reads back equal (``_item``) with no
    copy in the metadata, a document a third smaller to store and to read."""
    return len(item) == 2 and item.get("role") == role and type(item.get("content")) is str


def message_item(message: ChatMessage) -> TResponseInputItem:
    """The item a stored message holds, or one made of its role and content."""
    return _item(message.metadata, message.role, message.content)


def document_item(document: dict[str, Any]) -> TResponseInputItem:
    """``message_item`` of a message document (``load_messages_as``), written out: it runs
    once per item of every ``get_items``."""
    item: Any = document["metadata"].get(ITEM_KEY)
    if type(item) is not dict:
        role = document["role"]
        item = {"role": "assistant" if role == "tool" else role, "content": document["content"]}
    return item  # type: ignore[no-any-return]


def _item(metadata: dict[str, Any], role: str, content: str) -> TResponseInputItem:
    item = metadata.get(ITEM_KEY)
    if type(item) is dict:
        return cast(TResponseInputItem, item)
    return cast(TResponseInputItem,
                {"role": "assistant" if role == "tool" else role, "content": content})


def _role(item: Mapping[str, Any]) -> str:
    role = item.get("role")
    if role in ("user", "assistant", "system"):
        return cast(str, role)
    if role == "developer":
        return "system"
    kind = item.get("type")
    if isinstance(kind, str) and kind.endswith("_output"):
        return "tool"
    return "assistant"


def _text(item: Mapping[str, Any]) -> str:
    """A readable text of an item: its content (the text of its parts), else a tool call's
    name and arguments or a tool's output, else nothing."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part.get("text", part.get("refusal")) for part in content
                 if isinstance(part, dict))
        return "".join(text for text in texts if isinstance(text, str))
    output = item.get("output")
    if isinstance(output, str):
        return output
    name, arguments = item.get("name"), item.get("arguments")
    if isinstance(name, str):
        return f"{name}({arguments if isinstance(arguments, str) else ''})"
    return ""
