"""The ``search`` command: a thin call into ``SessionStorage.search_messages``. Prints the hits
best first, one line each; exit 1 when no message matches (as ``grep``), errors reach
``kvsessions.cli.main`` as one line (exit 2)."""

from __future__ import annotations

import argparse
from typing import Any

from kvsessions.cli.main import plural, positive_int
from kvsessions.cli.stores import opened_session_storage, store_argument
from kvsessions.sessions.search import MessageHit
from kvsessions.urls import redact_url

__all__ = ["register"]

#: Characters of a message's content shown per hit.
_SNIPPET = 80


def _snippet(content: str) -> str:
    text = " ".join(content.split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET - 1] + "…"


def _line(hit: MessageHit) -> str:
    return (f"{hit.rank:>3}  {hit.score:9.4g}  {hit.session_id}  {hit.message_id}  "
            f"{hit.message.role:<9}  {_snippet(hit.message.content)}")


async def search(args: argparse.Namespace) -> int:
    async with opened_session_storage(args.url) as storage:
        hits = await storage.search_messages(args.query, session_id=args.session,
                                             user_id=args.user, limit=args.limit)
        how = storage.store.text_search
    where = redact_url(args.url)
    if args.session is not None:
        where += f", session {args.session}"
    if not hits:
        print(f"No message holds every word of {args.query!r} in {where}")
        return 1
    print(f"{'#':>3}  {'score':>9}  session  message  role       content")
    for hit in hits:
        print(_line(hit))
    print(f"\n{plural(len(hits), 'message')} for {args.query!r} in {where} "
          f"(best first; searched by {'a scan' if how == 'scan' else how + ' index'})")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``search`` command to the ``kvsessions`` parser."""
    parser = subparsers.add_parser(
        "search", help="find messages holding every word of a query, best first",
        description="Full-text search over message contents: messages holding every word of "
        "QUERY (case-insensitive), best first. Stores with a text index (SQLite FTS5, "
        "PostgreSQL, MongoDB) use it, making it on first use; the others are scanned. Exit 1 "
        "when nothing matches.")
    parser.add_argument("url", metavar="URL", type=store_argument,
                        help="the store: a URL (sqlite:///sessions.db, "
                             "postgresql://user@host/db, ...) or a SQLite file's path")
    parser.add_argument("query", metavar="QUERY", help="the words to look for")
    parser.add_argument("--session", metavar="ID", help="only in the session with this id")
    parser.add_argument("--user", metavar="ID",
                        help="only in sessions whose owner (user_id) is ID")
    parser.add_argument("--limit", type=positive_int, default=20, metavar="N",
                        help="show at most N messages (default 20, at most 1000)")
    parser.set_defaults(handler=search)
