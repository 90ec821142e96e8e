"""The ``kvsessions`` command: ``main`` parses and dispatches (``cli.main``), each module beside
it registers the sub-commands of one area."""

from kvsessions.cli.main import main

__all__ = ["main"]
