#!/usr/bin/env python
"""Copy every document from one store to another, for operators: the same code as
``kvsessions migrate`` (resumable, verified, with a progress bar).

    python scripts/migrate.py sqlite:////var/lib/app/sessions.db postgresql://app@db/app
    python scripts/migrate.py verify SRC_URL DST_URL       # any migration command works too

Run it again after an interruption (Ctrl-C, crash, kill -9): it continues after the last
checkpoint. ``--help`` lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing: the package is beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvsessions.cli.main import main

_COMMANDS = {"migrate", "verify", "export", "import", "backup", "validate", "upgrade"}


def run(argv: list[str]) -> int:
    if argv and argv[0] in _COMMANDS:
        return main(argv)
    return main(["migrate", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
