"""The ``migrate``, ``verify``, ``export``, ``import``, ``backup``, ``validate`` and ``upgrade``
commands: thin calls into ``kvsessions.migration`` with a progress display.

Exit codes: 0 done (and equal, and valid, where that is checked), 1 the check found differences
or invalid documents, 2 an error (printed as one line by ``kvsessions.cli.main``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import orjson

from kvsessions.atomic_file import check_destination
from kvsessions.cli.main import number_of, plural, positive_int
from kvsessions.cli.progress import ProgressDisplay
from kvsessions.cli.stores import DEFAULT_CONNECT_TIMEOUT, opened_store, store_argument
from kvsessions.errors import ConfigError, StoreNotFoundError
from kvsessions.kv.base import KVStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.migration import (
    backup_storage,
    count_documents,
    export_to_json,
    import_from_json,
    migrate_storage,
    upgrade_storage,
    validate_storage,
    verify_migration,
)
from kvsessions.migration.jsonl import STDOUT
from kvsessions.urls import redact_url

__all__ = ["register"]

_SHOWN_KEYS = 10


@contextlib.asynccontextmanager
async def _counting_total(display: ProgressDisplay, store: KVStore,
                          prefix: str) -> AsyncIterator[None]:
    """On a terminal, count the documents in the background so the bar can show an ETA."""
    task: asyncio.Task[None] | None = None
    if display.tty and display.enabled:
        async def count() -> None:
            display.total = await count_documents(store, prefix=prefix)
        task = asyncio.create_task(count())
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@contextlib.asynccontextmanager
async def _destination(args: argparse.Namespace) -> AsyncIterator[KVStore]:
    """The destination store, created when missing; a dry run creates nothing, so there a
    destination that does not exist yet reads as an empty store (a memory store stands in)."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(opened_store(
                args.destination, args.connect_timeout, create=not args.dry_run))
        except StoreNotFoundError:
            print(f"dry run: {redact_url(args.destination)} does not exist yet; compared with "
                  "an empty store, nothing created", file=sys.stderr)
            store = MemoryStore()
            await store.open()
            stack.push_async_callback(store.close)
        yield store


def _display(args: argparse.Namespace) -> ProgressDisplay:
    return ProgressDisplay(args.command, interval=args.progress_interval, enabled=not args.quiet)


def _emit_json(result: dict[str, Any], stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


def _show_keys(title: str, keys: list[str], total: int) -> None:
    if not total:
        return
    print(f"  {title}: {total:,}")
    for key in keys[:_SHOWN_KEYS]:
        print(f"    {key}")
    if total > _SHOWN_KEYS:
        print(f"    ... and {total - _SHOWN_KEYS:,} more")


def _show_invalid(result: dict[str, Any]) -> None:
    invalid = result.get("invalid_documents") or 0
    if invalid:
        print(f"invalid documents: {invalid:,} (copied or kept unchanged; listed below)")
        for entry in result["invalid"][:_SHOWN_KEYS]:
            print(f"    {entry['error']}")
        if invalid > _SHOWN_KEYS:
            print(f"    ... and {invalid - _SHOWN_KEYS:,} more (--json lists 100)")


def _show_verification(verification: dict[str, Any]) -> None:
    if verification["ok"]:
        print(f"verify: equal ({plural(verification['source_count'], 'document')} on each "
              "side)")
        return
    print(f"verify: NOT equal (source {verification['source_count']:,}, destination "
          f"{verification['destination_count']:,}, matching {verification['matching']:,})")
    for what in ("missing", "different", "extra"):
        _show_keys(what, verification[what], verification[f"{what}_count"])


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} docs/s" if seconds > 0 else "-"


# ---------------------------------------------------------------------- handlers


async def _migrate(args: argparse.Namespace) -> int:
    if args.source == args.destination:
        raise ConfigError("source and destination are the same URL")
    display = _display(args)
    async with opened_store(args.source, args.connect_timeout) as source, \
            _destination(args) as destination, \
            _counting_total(display, source, args.prefix):
        with display:
            result = await migrate_storage(
                source, destination, verify=args.verify, progress_callback=display,
                batch_size=args.batch_size, resume=args.resume, prefix=args.prefix,
                upgrade=args.upgrade, validate=args.validate, dry_run=args.dry_run,
                concurrency=args.concurrency, merge=args.merge, workers=args.workers)
    if args.json:
        _emit_json(result)
    else:
        verb = "would copy" if result["dry_run"] else "copied"
        copied, seconds = result["documents_copied"], result["duration_seconds"]
        print(f"{verb} {plural(copied, 'document')} "
              f"({plural(result['sessions_migrated'], 'session')}, "
              f"{plural(result['messages_migrated'], 'message')}, "
              f"{plural(result['files_migrated'], 'file')}) "
              f"in {seconds:.2f} s ({_rate(copied, seconds)})")
        if result["resumed_from"] is not None:
            print(f"resumed after {result['resumed_from']!r} "
                  f"({plural(result['documents_copied_before_resume'], 'document')} copied "
                  "before)")
        if result["documents_upgraded"]:
            print(f"upgraded {plural(result['documents_upgraded'], 'document')} to the newest "
                  "version")
        _show_invalid(result)
        if result["verification"] is not None:
            _show_verification(result["verification"])
    return 1 if result["verified"] is False else 0


async def _verify(args: argparse.Namespace) -> int:
    async with opened_store(args.source, args.connect_timeout) as source, \
            opened_store(args.destination, args.connect_timeout) as destination:
        result = await verify_migration(source, destination, prefix=args.prefix,
                                        upgrade=args.upgrade, batch_size=args.batch_size)
    if args.json:
        _emit_json(result)
    else:
        _show_verification(result)
    return 0 if result["ok"] else 1


async def _export(args: argparse.Namespace) -> int:
    if args.file != STDOUT:  # before the store is opened: a refused file costs nothing
        await asyncio.to_thread(check_destination, args.file)
    display = _display(args)
    async with opened_store(args.url, args.connect_timeout) as store, \
            _counting_total(display, store, args.prefix):
        with display:
            result = await export_to_json(store, args.file, prefix=args.prefix,
                                          batch_size=args.batch_size, progress_callback=display)
    to_stdout = args.file == STDOUT  # then stdout holds the export and nothing else
    if args.json:
        _emit_json(result, sys.stderr if to_stdout else sys.stdout)
    else:
        where = "standard output" if to_stdout else result["path"]
        print(f"exported {plural(result['documents_exported'], 'document')} to {where} "
              f"({result['size_bytes']:,} bytes, sha256 {result['sha256'][:16]}...)",
              file=sys.stderr if to_stdout else sys.stdout)
    return 0


async def _import(args: argparse.Namespace) -> int:
    display = _display(args)
    async with opened_store(args.url, args.connect_timeout, create=True) as store:
        with display:
            result = await import_from_json(store, args.file, batch_size=args.batch_size,
                                            progress_callback=display)
    if args.json:
        _emit_json(result)
    else:
        print(f"imported {plural(result['documents_imported'], 'document')} from "
              f"{result['path']} "
              f"(checked: count and sha256 {result['sha256'][:16]}... match)")
    return 0


async def _backup(args: argparse.Namespace) -> int:
    display = _display(args)
    async with opened_store(args.url, args.connect_timeout) as store, \
            _counting_total(display, store, args.prefix):
        with display:
            result = await backup_storage(store, args.directory, prefix=args.prefix,
                                          progress_callback=display)
    if args.json:
        _emit_json(result)
    else:
        print(f"backup written: {result['path']} "
              f"({plural(result['documents_exported'], 'document')}, "
              f"{result['size_bytes']:,} bytes)")
    return 0


async def _validate(args: argparse.Namespace) -> int:
    display = _display(args)
    async with opened_store(args.url, args.connect_timeout) as store, \
            _counting_total(display, store, args.prefix):
        with display:
            result = await validate_storage(store, prefix=args.prefix,
                                            batch_size=args.batch_size,
                                            progress_callback=display)
    if args.json:
        _emit_json(result)
    else:
        print(f"checked {plural(result['documents_checked'], 'document')}: "
              f"{result['invalid_documents']:,} invalid, "
              f"{result['outdated_documents']:,} of an older version (kvsessions upgrade)")
        for entry in result["invalid"][:_SHOWN_KEYS]:
            print(f"    {entry['error']}")
    return 0 if result["ok"] else 1


async def _upgrade(args: argparse.Namespace) -> int:
    display = _display(args)
    async with opened_store(args.url, args.connect_timeout) as store, \
            _counting_total(display, store, args.prefix):
        with display:
            result = await upgrade_storage(store, prefix=args.prefix, batch_size=args.batch_size,
                                           progress_callback=display)
    if args.json:
        _emit_json(result)
    else:
        if result["layout_keys_moved"]:
            print(f"moved {plural(result['layout_keys_moved'], 'key')} out of the store "
                  "layout of an earlier release")
        print(f"checked {plural(result['documents_checked'], 'document')}, upgraded "
              f"{result['documents_upgraded']:,} to the newest version")
        _show_invalid(result)
    return 0


# ---------------------------------------------------------------------- parsers

_seconds_type = number_of("seconds", allow_zero=True)


def _common(parser: argparse.ArgumentParser, *, prefix: bool = True, progress: bool = True,
            batch: bool = True) -> None:
    if prefix:
        parser.add_argument("--prefix", default="", metavar="P",
                            help="only keys starting with P (default: everything)")
    if batch:
        parser.add_argument("--batch-size", type=positive_int, default=1000, metavar="N",
                            help="documents per read and write batch (default 1000)")
    if progress:
        parser.add_argument("--progress-interval", type=_seconds_type, default=None, metavar="S",
                            help="seconds between progress updates (default: 0.1 on a "
                                 "terminal; elsewhere only the closing line)")
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    parser.add_argument("--connect-timeout", type=_seconds_type, default=DEFAULT_CONNECT_TIMEOUT,
                        metavar="S", help="give up connecting after S seconds (default 10)")
    parser.add_argument("--json", action="store_true",
                        help="print the result dictionary as JSON")


#: What each command's positional arguments are.
_SOURCE_HELP = ("the store to read: a URL (sqlite:///sessions.db, sqlite:////srv/app/sessions.db, "
                "postgresql://user@host/db, ...) or a SQLite file's path")
_DESTINATION_HELP = "the store to write to (a URL or a SQLite file's path, as SRC_URL)"
_STORE_HELP = ("the store: a URL (sqlite:///sessions.db, redis://host:6379/0, ...) or a SQLite "
               "file's path")


def register(subparsers: Any) -> None:
    """Add the migration commands to the ``kvsessions`` parser."""
    migrate = subparsers.add_parser(
        "migrate", help="copy every document from one store to another (resumable)",
        description="Copy every document from SRC_URL to DST_URL in key order. An interrupted "
        "run (Ctrl-C, crash, kill -9) resumes where it stopped when run again. A destination "
        "that already holds other documents is refused unless --merge is given.")
    migrate.add_argument("source", metavar="SRC_URL", type=store_argument,
                           help=_SOURCE_HELP)
    migrate.add_argument("destination", metavar="DST_URL", type=store_argument,
                         help=_DESTINATION_HELP)
    migrate.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                         help="continue after the checkpoint of an interrupted run "
                              "(default: yes)")
    migrate.add_argument("--upgrade", action="store_true",
                         help="rewrite older document versions as the newest on the way")
    migrate.add_argument("--no-verify", dest="verify", action="store_false",
                         help="skip comparing both stores afterwards")
    migrate.add_argument("--no-validate", dest="validate", action="store_false",
                         help="skip checking documents against their schemas")
    migrate.add_argument("--merge", action="store_true",
                         help="copy into a destination that already holds other documents "
                              "(refused otherwise)")
    migrate.add_argument("--dry-run", action="store_true",
                         help="read and check everything, write nothing")
    migrate.add_argument("--concurrency", type=positive_int, default=None, metavar="N",
                         help="batches written at once (default: measure 1 and 2, keep the "
                              "faster)")
    migrate.add_argument("--workers", type=positive_int, default=1, metavar="N",
                         help="streams copying key ranges at once, each resumable on its own "
                              "(default 1)")
    _common(migrate)
    migrate.set_defaults(handler=_migrate, when_interrupted="run the same command again to "
                         "resume where it stopped")

    verify = subparsers.add_parser(
        "verify", help="compare two stores document by document (exit 0 only when equal)",
        description="Walk both stores in key order side by side and list the documents "
        "missing from DST_URL, different in it, or only in it. Exit 0 when both hold the same "
        "documents, 1 when they differ. Changes nothing.")
    verify.add_argument("source", metavar="SRC_URL", type=store_argument,
                          help=_SOURCE_HELP)
    verify.add_argument("destination", metavar="DST_URL", type=store_argument,
                        help="the store to compare with")
    verify.add_argument("--upgrade", action="store_true",
                        help="compare the source's documents upgraded to the newest version")
    _common(verify, progress=False)
    verify.set_defaults(handler=_verify)

    export = subparsers.add_parser(
        "export", help="write a store to a JSON Lines file (.gz: gzip; .json: one document)",
        description="Write every document of a store to FILE, with a closing count and "
        "SHA-256 that import checks. FILE ending in .gz is gzipped; .json (or .json.gz) "
        "holds one JSON document; - writes JSON Lines to standard output. FILE must be new "
        "or a regular file; it appears only when complete. Changes nothing in the store.")
    export.add_argument("url", metavar="URL", type=store_argument, help=_STORE_HELP)
    export.add_argument("file", metavar="FILE",
                        help="the export file to write (new or a regular file), or - for "
                             "standard output")
    _common(export)
    export.set_defaults(handler=_export, when_interrupted="no export file was written; run "
                        "it again to start over")

    import_ = subparsers.add_parser(
        "import", help="load an export file into a store (checked whole before any write)",
        description="Check FILE whole (every line's checksum, key order, the closing count "
        "and SHA-256), then put its documents into the store. A damaged file is refused, "
        "naming the line, and nothing is written. Documents already stored under the same "
        "keys are overwritten; others are kept.")
    import_.add_argument("url", metavar="URL", type=store_argument, help=_STORE_HELP)
    import_.add_argument("file", metavar="FILE",
                         help="an export file written by kvsessions export or backup")
    _common(import_, prefix=False)
    import_.set_defaults(handler=_import, when_interrupted="run it again to import the whole "
                         "file (documents already imported are written again, unchanged)")

    backup = subparsers.add_parser(
        "backup", help="write a timestamped gzip export into a folder",
        description="Export every document to DIR/kvsessions-backup-<UTC time>.jsonl.gz "
        "(DIR is created if needed). Restore with kvsessions import.")
    backup.add_argument("url", metavar="URL", type=store_argument, help=_STORE_HELP)
    backup.add_argument("directory", metavar="DIR", help="the folder that keeps the backups")
    _common(backup, batch=False)
    backup.set_defaults(handler=_backup, when_interrupted="no backup file was written; run it "
                        "again to start over")

    validate = subparsers.add_parser(
        "validate", help="check every document against its schema (exit 1 if any is invalid)",
        description="Check every document against the JSON Schema of its kind and version "
        "and list the invalid ones with the field and the reason. Exit 0 when all are valid, "
        "1 otherwise. Changes nothing.")
    validate.add_argument("url", metavar="URL", type=store_argument, help=_STORE_HELP)
    _common(validate)
    validate.set_defaults(handler=_validate)

    upgrade = subparsers.add_parser(
        "upgrade", help="rewrite every document of an older version as the newest version",
        description="Rewrite every document stored in an older version of its schema as the "
        "newest version, in place; documents already at the newest version are left alone.")
    upgrade.add_argument("url", metavar="URL", type=store_argument, help=_STORE_HELP)
    _common(upgrade)
    upgrade.set_defaults(handler=_upgrade, when_interrupted="run it again to finish: documents "
                         "already upgraded are left alone")
