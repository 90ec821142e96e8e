"""The data models of the seed specification: a chat session, its messages, uploaded files.

Datetimes are timezone-aware UTC; ids are strings; message ids are UUIDv7, so a session's
message keys sort in conversation order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kvsessions.documents.ids import uuid7_str

__all__ = [
    "MESSAGE_ROLES",
    "SESSION_STATUSES",
    "ChatMessage",
    "ChatSession",
    "UploadedFileRecord",
    "utc_now",
]

SESSION_STATUSES = ("active", "archived", "expired")
MESSAGE_ROLES = ("user", "assistant", "system", "tool")
SessionStatus = Literal["active", "archived", "expired"]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ChatMessage:
    message_id: str
    session_id: str
    role: str
    content: str
    created_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        session_id: str,
        role: str,
        content: str,
        metadata: dict[str, Any] | None = None,
    ) -> ChatMessage:
        return cls(
            message_id=uuid7_str(),
            session_id=session_id,
            role=role,
            content=content,
            created_at=utc_now(),
            metadata=dict(metadata or {}),
        )


@dataclass
class ChatSession:
    session_id: str
    model: str
    created_at: datetime
    updated_at: datetime
    message_count: int = 0
    messages: list[ChatMessage] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = "active"
    #: The owner, set when the session is created (``None``: none); never changed after.
    user_id: str | None = None
    app_name: str | None = None
    #: The stored head's revision as last read or written (0: never stored).
    revision: int = 0

    @classmethod
    def create(cls, model: str, metadata: dict[str, Any] | None = None, *,
               user_id: str | None = None, app_name: str | None = None) -> ChatSession:
        now = utc_now()
        return cls(
            session_id=uuid7_str(),
            model=model,
            created_at=now,
            updated_at=now,
            metadata=dict(metadata or {}),
            user_id=user_id,
            app_name=app_name,
        )

    def add_message(
        self, role: str, content: str, metadata: dict[str, Any] | None = None
    ) -> ChatMessage:
        """Append a message; it is stored by the next ``save_session`` or ``auto_save``."""
        message = ChatMessage.create(self.session_id, role, content, metadata)
        self.messages.append(message)
        self.message_count = max(self.message_count + 1, len(self.messages))
        self.updated_at = message.created_at
        return message


@dataclass
class UploadedFileRecord:
    file_id: str
    gemini_file_name: str
    gemini_file_uri: str
    display_name: str
    size: int
    mime_type: str
    uploaded_at: datetime
    expires_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        gemini_file_name: str,
        gemini_file_uri: str,
        display_name: str,
        size: int,
        mime_type: str,
        *,
        lifetime: timedelta = timedelta(hours=48),
        metadata: dict[str, Any] | None = None,
    ) -> UploadedFileRecord:
        now = utc_now()
        return cls(
            file_id=uuid7_str(),
            gemini_file_name=gemini_file_name,
            gemini_file_uri=gemini_file_uri,
            display_name=display_name,
            size=size,
            mime_type=mime_type,
            uploaded_at=now,
            expires_at=now + lifetime,
            metadata=dict(metadata or {}),
        )

    @property
    def expired(self) -> bool:
        return self.expires_at <= utc_now()
