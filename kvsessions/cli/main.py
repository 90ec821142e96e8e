"""The ``kvsessions`` command. Each command is a thin call into the library (modules under
``kvsessions/cli/``); errors become one line on stderr and a non-zero exit, never a
traceback, and every URL shown is redacted."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from kvsessions import __version__
from kvsessions.errors import KVSessionsError
from kvsessions.urls import redact_url

__all__ = ["Command", "main", "number_of", "plural", "positive_int"]

logger = logging.getLogger("kvsessions.cli")

#: Modules that add commands: each has ``register(subparsers)``, where every parser it adds
#: sets ``handler`` (an async function taking the parsed arguments and returning an exit code)
#: and may set ``when_interrupted`` (what running it again after Ctrl-C does).
COMMAND_MODULES = (
    "kvsessions.cli.sessions",
    "kvsessions.cli.search",
    "kvsessions.cli.migration",
)

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``, ``1,000 documents``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def number_of(unit: str, *, allow_zero: bool) -> Callable[[str], float]:
    """argparse type: a finite number of ``unit`` (seconds, hours), > 0 or >= 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        low_ok = value >= 0 if allow_zero else value > 0
        if not (low_ok and value < float("inf")):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"{text!r} must be a number of {unit} {bound}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvsessions",
        description="Chat sessions on any key-value store. Every store argument is a URL, "
        "e.g. sqlite:///sessions.db (relative to the working folder), "
        "sqlite:////srv/app/sessions.db (absolute), postgresql://user@host/db, "
        "redis://host:6379/0, or the path of a SQLite file.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what is opened and done (on stderr)")
    parser.add_argument("--version", action="version", version=f"kvsessions {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Command = args.handler
    started = time.perf_counter()
    try:
        code = asyncio.run(handler(args))
    except KVSessionsError as exc:
        print(f"kvsessions {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = getattr(args, "when_interrupted", None)
        print(f"kvsessions {args.command}: interrupted{'; ' + again if again else ''}",
              file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"kvsessions {args.command}: error: {_os_error_text(exc)}", file=sys.stderr)
        return 2
    logger.info("%s done in %.2f s (exit code %d)", args.command,
                time.perf_counter() - started, code)
    return code


def _os_error_text(exc: OSError) -> str:
    """``path: reason`` for a file error (not Python's ``[Errno 2] ...``), redacted."""
    if exc.filename is not None and exc.strerror:
        return redact_url(f"{exc.filename}: {exc.strerror}")
    return redact_url(exc.strerror or str(exc))


if __name__ == "__main__":
    sys.exit(main())
