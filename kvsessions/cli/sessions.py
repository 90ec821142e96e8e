"""The ``demo``, ``ls``, ``show``, ``stats`` and ``cleanup`` commands: thin calls into
``SessionStorage`` and ``SessionManager``. Every URL printed is redacted; errors reach
``kvsessions.cli.main``, which prints them as one line (exit 2). A session that is not there is
exit 1."""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from kvsessions.cli.main import number_of, plural, positive_int
from kvsessions.cli.stores import opened_session_storage, store_argument
from kvsessions.config import StorageConfig
from kvsessions.documents.models import SESSION_STATUSES, ChatSession, UploadedFileRecord, utc_now
from kvsessions.sessions.exports import EXPORT_FORMATS
from kvsessions.sessions.manager import SessionManager, check_expiry_hours
from kvsessions.urls import redact_url

__all__ = ["register"]

#: The demo conversations: (model, status, [(role, content), ...]).
DEMO_CONVERSATIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("gemini-2.5-flash", "active", [
        ("user", "Hello! What is a key-value store?"),
        ("assistant", "A store that maps keys to values, like a dictionary that survives "
                      "restarts."),
        ("user", "And why keep chat sessions in one?"),
        ("assistant", "Every database you already run can be one, so the sessions go where "
                      "your data already is."),
    ]),
    ("gemini-2.5-pro", "active", [
        ("system", "You answer in one sentence."),
        ("user", "Summarise the attached notes."),
        ("assistant", "The notes compare five stores and pick the one the team already runs."),
    ]),
    ("gemini-2.5-flash", "archived", [
        ("user", "Remind me: what did we decide last week?"),
        ("assistant", "To archive old sessions instead of deleting them."),
    ]),
]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _when(session: ChatSession) -> str:
    return f"{session.updated_at:%Y-%m-%d %H:%M:%S}"


def _session_rows(sessions: Sequence[ChatSession]) -> list[list[str]]:
    return [[s.session_id, s.status, s.model, str(s.message_count), _when(s)] for s in sessions]


_SESSION_HEADERS = ("SESSION ID", "STATUS", "MODEL", "MESSAGES", "UPDATED (UTC)")


async def _store_url(args: argparse.Namespace) -> str:
    """The URL given, else the configured store's (``STORAGE_URL`` and the other ``STORAGE_*``
    variables, or ``--config``), else ``sessions.db`` in the working folder."""
    if args.url:
        return str(args.url)
    return (await asyncio.to_thread(StorageConfig.load, args.config)).store_url()


_MASKED_PASSWORD = re.compile(r":\*\*\*@")
_MASKED_OPTION = re.compile(r"([?&])[^=&]+=\*\*\*(&|$)")


def _try_lines(args: argparse.Namespace, shown: str, session_id: str) -> list[str]:
    """Commands to paste next. A masked password cannot be pasted: then the commands read the
    same configuration the demo did, or show the URL without it and say to add it."""
    header = "Try:"
    if "***" in shown:
        if not args.url:
            where = f" --config '{args.config}'" if args.config else ""
            return ["Try (they read the same configuration):",
                    *(f"  kvsessions {command}{where}{rest}" for command, rest in
                      (("ls", ""), ("show", f" {session_id}"), ("stats", "")))]
        shown = _MASKED_OPTION.sub(lambda m: m.group(1) if m.group(2) else "",
                                   _MASKED_PASSWORD.sub("@", shown))
        header = "Try (with your password in the URL):"
    return [header, f"  kvsessions ls '{shown}'", f"  kvsessions show '{shown}' {session_id}",
            f"  kvsessions stats '{shown}'"]


# ---------------------------------------------------------------------- commands

async def demo(args: argparse.Namespace) -> int:
    url = await _store_url(args)
    shown = redact_url(url)
    async with opened_session_storage(url, create=True) as storage:
        manager = SessionManager(storage)
        made = []
        for model, status, turns in DEMO_CONVERSATIONS:
            session = await manager.create_session(model)
            session.metadata["demo"] = True
            for role, content in turns:
                session.add_message(role, content)
            await manager.auto_save(session)
            if status == "archived":
                await manager.archive_session(session.session_id)
            made.append(session)
        record = UploadedFileRecord.create(
            "files/demo-notes", "https://files.example.invalid/demo-notes", "notes.pdf",
            48_213, "application/pdf", metadata={"session_id": made[1].session_id})
        await storage.save_file_record(record)
    print(f"Demo data written to {shown}\n")
    print(_table(_SESSION_HEADERS, _session_rows(made), right={3}))
    print(f"\nFile record {record.file_id}: {record.display_name} ({record.mime_type}, "
          f"{record.size:,} bytes), expires {record.expires_at:%Y-%m-%d %H:%M} UTC")
    print()
    print("\n".join(_try_lines(args, shown, made[0].session_id)))
    return 0


async def list_command(args: argparse.Namespace) -> int:
    """One page of session heads and how many there are; the command for the next page is
    printed under it."""
    url = await _store_url(args)
    owned = args.user is not None or args.app is not None
    async with opened_session_storage(url) as storage:
        sessions, cursor = await storage.page_sessions(status=args.status, limit=args.limit,
                                                       before=args.before, user_id=args.user,
                                                       app_name=args.app)
        # Counting reads every head (streamed): only when there is more than this page, and
        # not for one owner's sessions (listed through the index, never counted).
        total = (await storage.count_sessions(args.status)
                 if cursor is not None and not owned else None)
    what = f"{args.status} session" if args.status else "session"
    owner = "".join(f" of {kind} {name!r}" for kind, name in (("user", args.user),
                                                             ("app", args.app)) if name)
    shown = redact_url(url)
    if not sessions:
        print(f"No {'more ' if args.before else ''}{what}s{owner} in {shown}")
        return 0
    print(_table(_SESSION_HEADERS, _session_rows(sessions), right={3}))
    if total is not None and total > len(sessions):
        print(f"\n{len(sessions):,} of {plural(total, what)} in {shown} (the most recently "
              "updated; --limit shows more)")
    elif cursor is not None:
        print(f"\nthe {plural(len(sessions), what)}{owner} updated most recently in {shown} "
              "(there are more)")
    else:
        print(f"\n{plural(len(sessions), what)}{owner} in {shown}")
    if cursor is not None:
        options = "".join(f" --{option} {shlex.quote(value)}" for option, value in (
            ("status", args.status), ("user", args.user), ("app", args.app)) if value)
        print(f"next page: kvsessions ls {shlex.quote(shown)}{options} "
              f"--limit {args.limit} --before {shlex.quote(cursor)}")
    return 0


async def show(args: argparse.Namespace) -> int:
    url = await _store_url(args)
    async with opened_session_storage(url) as storage:
        manager = SessionManager(storage, auto_save_enabled=False)
        text = await manager.export_session(args.session_id, format=args.format)
    if text is None:
        print(f"kvsessions show: no session {args.session_id!r} in {redact_url(url)}",
              file=sys.stderr)
        return 1
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


async def stats(args: argparse.Namespace) -> int:
    url = await _store_url(args)
    async with opened_session_storage(url) as storage:
        result = await storage.statistics()
    if args.json:
        print(orjson.dumps({"store": redact_url(url), **result},
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    by_status = ", ".join(f"{name} {count:,}" for name, count in
                          result["sessions_by_status"].items())
    print(f"Store:     {redact_url(url)}")
    print(f"Sessions:  {result['total_sessions']:,} ({by_status})")
    print(f"Messages:  {result['total_messages']:,}")
    print(f"Files:     {result['total_files']:,} ({result['expired_files']:,} expired)")
    return 0


async def cleanup(args: argparse.Namespace) -> int:
    hours = args.expiry_hours
    if hours is None:
        hours = StorageConfig.load().expiry_hours
    check_expiry_hours(hours, what="--expiry-hours")  # before any store is opened
    async with opened_session_storage(args.url) as storage:
        manager = SessionManager(storage, expiry_hours=hours)
        expired = await manager.cleanup_expired_sessions()
        files = await storage.delete_expired_files()
    cutoff = utc_now() - timedelta(hours=hours)
    print(f"Marked {expired:,} session{'s' if expired != 1 else ''} expired (not updated since "
          f"{cutoff:%Y-%m-%d %H:%M} UTC, {hours:g} h ago)")
    print(f"Deleted {files:,} expired file record{'s' if files != 1 else ''}")
    print(f"Store: {redact_url(args.url)}")
    return 0


# ---------------------------------------------------------------------- parsers

_hours_type = number_of("hours", allow_zero=False)

#: Where a command without a URL looks: the same configuration as demo's.
_CONFIGURED = ("the store: a URL (e.g. sqlite:///sessions.db, postgresql://user@host/db) or a "
               "SQLite file's path; default: the configured one (STORAGE_URL or the other "
               "STORAGE_* variables, or --config), else sessions.db here")


def _configured_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", nargs="?", default=None, type=store_argument,
                        help=_CONFIGURED)
    parser.add_argument("--config", metavar="PATH",
                        help="a YAML or TOML file with a storage section (used without URL)")


def register(subparsers: Any) -> None:
    """Add the session commands to the ``kvsessions`` parser."""
    url_help = ("the store: a URL (sqlite:///sessions.db, postgresql://user@host/db, ...) or a "
                "SQLite file's path")

    parser = subparsers.add_parser(
        "demo", help="write a few example sessions and a file record into a store",
        description="Create three example sessions (one archived) with messages and one file "
        "record, then print what was made and where. Without --url the configured store is "
        "used (STORAGE_URL and the other STORAGE_* variables, or --config); with nothing "
        "configured that is sessions.db (SQLite) in the working folder.")
    parser.add_argument("--url", type=store_argument,
                        help="the store to write to (default: the configured one)")
    parser.add_argument("--config", metavar="PATH",
                        help="a YAML or TOML file with a storage section")
    parser.set_defaults(handler=demo)

    parser = subparsers.add_parser(
        "ls", help="list sessions, most recently updated first",
        description="List session heads as a table, most recently updated first, and how "
        "many there are. Without URL the configured store is read, as demo writes it.")
    _configured_store(parser)
    parser.add_argument("--status", choices=SESSION_STATUSES, metavar="S",
                        help=f"only sessions with status S: {', '.join(SESSION_STATUSES)}")
    parser.add_argument("--limit", type=positive_int, default=100, metavar="N",
                        help="show at most N sessions (default 100)")
    parser.add_argument("--before", metavar="CURSOR",
                        help="the page after the one that printed this cursor")
    parser.add_argument("--user", metavar="USER",
                        help="only sessions of user USER (their user_id)")
    parser.add_argument("--app", metavar="APP",
                        help="only sessions of application APP (their app_name)")
    parser.set_defaults(handler=list_command)

    parser = subparsers.add_parser(
        "show", help="print one session with its messages",
        description="Print a session in the export format chosen (exit 1 if there is none). "
        "Without URL the configured store is read.")
    _configured_store(parser)
    parser.add_argument("session_id", metavar="SESSION_ID",
                        help="the session's id, as ls lists it")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="markdown",
                        help="markdown (default), text or json")
    parser.set_defaults(handler=show)

    parser = subparsers.add_parser(
        "stats", help="count sessions by status, messages and file records",
        description="Count sessions by status, their messages (from the session heads) and "
        "file records. Without URL the configured store is read.")
    _configured_store(parser)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.set_defaults(handler=stats)

    parser = subparsers.add_parser(
        "cleanup", help="expire stale sessions and delete expired file records",
        description="Mark active sessions not updated for the expiry time as expired (they "
        "stay stored) and delete file records whose expiry has passed.")
    parser.add_argument("url", metavar="URL", type=store_argument, help=url_help)
    parser.add_argument("--expiry-hours", type=_hours_type, default=None, metavar="H",
                        help="expire sessions not updated for H hours (default: "
                             "STORAGE_EXPIRY_HOURS, else 72)")
    parser.set_defaults(handler=cleanup)
