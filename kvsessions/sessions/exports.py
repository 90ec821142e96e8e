"""A session as JSON, plain text or Markdown, in the shapes of the seed specification.

Times are shown in UTC (the stored times); the JSON format carries them as ISO 8601 with their
offset.
"""

from __future__ import annotations

from typing import Literal

import orjson

from kvsessions.documents.models import ChatSession
from kvsessions.errors import UnsupportedFormatError

__all__ = ["EXPORT_FORMATS", "ROLE_EMOJI", "ExportFormat", "UnsupportedFormatError",
           "render_session"]

ExportFormat = Literal["json", "text", "markdown"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("json", "text", "markdown")

#: The header emoji of each role in Markdown exports.
ROLE_EMOJI = {"user": "👤", "assistant": "🤖", "system": "⚙️", "tool": "🔧"}
_TEXT_RULE = "=" * 80


def render_session(session: ChatSession, format: str = "json") -> str:
    """The session in ``format`` ("json", "text" or "markdown")."""
    if format == "json":
        return _json(session)
    if format == "text":
        return _text(session)
    if format == "markdown":
        return _markdown(session)
    raise UnsupportedFormatError(
        f"unknown export format {format!r}; one of {', '.join(EXPORT_FORMATS)}")


def _json(session: ChatSession) -> str:
    document = {
        "session_id": session.session_id,
        "model": session.model,
        "created_at": session.created_at.isoformat(),
        "message_count": session.message_count,
        "messages": [
            {"role": m.role, "content": m.content, "created_at": m.created_at.isoformat()}
            for m in session.messages
        ],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def _text(session: ChatSession) -> str:
    lines = [
        f"Chat Session: {session.session_id}",
        f"Model: {session.model}",
        f"Created: {session.created_at:%Y-%m-%d %H:%M:%S}",
        f"Messages: {session.message_count}",
        "",
        _TEXT_RULE,
    ]
    for message in session.messages:
        lines += ["", f"[{message.created_at:%H:%M:%S}] {message.role.upper()}:",
                  message.content]
    return "\n".join(lines) + "\n"


def _markdown(session: ChatSession) -> str:
    lines = [
        f"# Chat Session: {session.session_id}",
        "",
        f"**Model:** {session.model}",
        f"**Created:** {session.created_at:%Y-%m-%d %H:%M:%S}",
        f"**Messages:** {session.message_count}",
        "",
        "---",
    ]
    for message in session.messages:
        emoji = ROLE_EMOJI.get(message.role, "💬")
        lines += ["", f"### {emoji} {message.role.capitalize()} "
                      f"({message.created_at:%H:%M:%S})", "", message.content]
    return "\n".join(lines) + "\n"
