"""``kvsessions search``: hits best first, one session, nothing found (exit 1), bad input (one
error line, exit 2), on a native store (SQLite) and a scanned one (a folder of files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import one_error_line, run_kvsessions


@pytest.mark.parametrize("scheme", ["sqlite", "file"])
def test_search_command(tmp_path: Path, scheme: str) -> None:
    url = f"sqlite:///{tmp_path}/demo.db" if scheme == "sqlite" else f"file://{tmp_path}/demo"
    done = run_kvsessions("demo", "--url", url)
    assert done.returncode == 0, done.stderr

    found = run_kvsessions("search", url, "Store")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].split() == ["#", "score", "session", "message", "role", "content"]
    assert lines[1].split()[0] == "1" and "store" in lines[1].lower()
    assert "2 messages for 'Store'" in found.stdout
    assert ("fts5 index" if scheme == "sqlite" else "a scan") in found.stdout
    session_id = lines[1].split()[2]

    one = run_kvsessions("search", url, "store", "--session", session_id, "--limit", "1")
    assert one.returncode == 0, one.stderr
    assert "1 message for 'store'" in one.stdout and f"session {session_id}" in one.stdout

    nothing = run_kvsessions("search", url, "zebra")
    assert nothing.returncode == 1
    assert "No message holds every word of 'zebra'" in nothing.stdout

    bad = run_kvsessions("search", url, "?!")
    assert bad.returncode == 2
    assert "holds no word to look for" in one_error_line(bad, "search")
