"""Running the installed ``kvsessions`` command in a subprocess, as a user runs it: the entry
point script beside this interpreter (the worktree's virtualenv), with ``STORAGE_*`` variables
cleared unless a test sets them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from kvsessions.kv.registry import open_store

KVSESSIONS = Path(sys.executable).with_name("kvsessions")


def run_kvsessions(*argv: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                   stdin: str | None = None, timeout: float = 120
                   ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_")}
    environment.update(env or {})
    return subprocess.run([str(KVSESSIONS), *argv], capture_output=True, text=True,
                          env=environment, cwd=cwd, input=stdin, timeout=timeout, check=False)


def one_error_line(done: subprocess.CompletedProcess[str], command: str) -> str:
    """The single line a failed command printed on stderr (exit 2), checked to be just that."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"kvsessions {command}: error: "), lines[0]
    assert "Traceback" not in done.stderr and "[Errno" not in lines[0]
    return lines[0]


def fill(url: str, documents: Mapping[str, bytes]) -> None:
    """Put ``documents`` into the store ``url`` names (created as needed)."""
    async def run() -> None:
        async with open_store(url) as store:
            await store.put_many(list(documents.items()))
    asyncio.run(run())


def keys_of(url: str) -> list[str]:
    async def run() -> list[str]:
        async with open_store(url) as store:
            return await store.keys()
    return asyncio.run(run())
