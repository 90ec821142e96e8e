"""The session commands: demo, ls, show, stats, cleanup (through ``kvsessions.cli.main``)."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from kvsessions.cli.main import main
from kvsessions.documents.models import ChatSession, UploadedFileRecord
from kvsessions.sessions.storage import SessionStorage

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cli.db"


@pytest.fixture(autouse=True)
def no_storage_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STORAGE_"):
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def session_ids(listing: str) -> list[str]:
    return [line.split()[0] for line in listing.splitlines()[2:] if line and line[0].isalnum()
            and len(line.split()[0]) == 36]


def test_ls_lists_one_owners_sessions(capsys: pytest.CaptureFixture[str], url: str) -> None:
    owners = [("ann", "chat"), ("ann", "chat"), ("ann", "mail"), ("bob", "chat"), (None, None)]

    async def store() -> list[str]:
        async with SessionStorage.from_url(url) as storage:
            made = [ChatSession.create("m", user_id=user, app_name=app) for user, app in owners]
            for session in made:
                await storage.save_session(session)
            return [session.session_id for session in made]

    made = asyncio.run(store())
    code, out, _ = run(capsys, "ls", url, "--user", "ann")
    assert code == 0 and sorted(session_ids(out)) == sorted(made[:3])
    assert "3 sessions of user 'ann' in" in out
    code, out, _ = run(capsys, "ls", url, "--app", "chat")
    assert sorted(session_ids(out)) == sorted([made[0], made[1], made[3]])
    code, out, _ = run(capsys, "ls", url, "--user", "ann", "--app", "chat")
    assert sorted(session_ids(out)) == sorted(made[:2])
    code, out, _ = run(capsys, "ls", url, "--user", "ann", "--app", "chat", "--limit", "1")
    assert len(session_ids(out)) == 1 and "(there are more)" in out
    next_page = shlex.split(out.split("next page: kvsessions ")[1].splitlines()[0])
    assert next_page[:8] == ["ls", url, "--user", "ann", "--app", "chat", "--limit", "1"]
    code, out, _ = run(capsys, *next_page)
    assert code == 0 and len(session_ids(out)) == 1 and "next page" not in out
    code, out, _ = run(capsys, "ls", url, "--user", "carol")
    assert code == 0 and out.startswith("No sessions of user 'carol' in")


def test_demo_then_ls_show_stats(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, out, _ = run(capsys, "demo", "--url", url)
    assert code == 0
    assert f"Demo data written to {url}" in out
    assert "notes.pdf" in out and f"kvsessions ls '{url}'" in out
    made = session_ids(out)
    assert len(made) == 3

    code, out, _ = run(capsys, "ls", url)
    assert code == 0
    assert out.splitlines()[0].split() == ["SESSION", "ID", "STATUS", "MODEL", "MESSAGES",
                                           "UPDATED", "(UTC)"]
    assert sorted(session_ids(out)) == sorted(made)
    assert "3 sessions in" in out
    code, out, _ = run(capsys, "ls", url, "--status", "archived")
    assert len(session_ids(out)) == 1 and "1 archived session in" in out
    code, out, _ = run(capsys, "ls", url, "--limit", "2")
    first_page = session_ids(out)
    assert len(first_page) == 2 and "next page: kvsessions ls " in out
    next_page = shlex.split(out.split("next page: kvsessions ")[1].splitlines()[0])
    assert next_page[:4] == ["ls", url, "--limit", "2"] and next_page[4] == "--before"
    code, out, _ = run(capsys, *next_page)
    assert code == 0 and "next page" not in out
    assert sorted(first_page + session_ids(out)) == sorted(made)
    code, out, _ = run(capsys, "ls", url, "--before", "not-a-cursor")
    assert code == 2 and out == ""
    code, out, _ = run(capsys, "ls", url, "--status", "expired")
    assert code == 0 and out.startswith("No expired sessions in")

    first = made[0]
    code, out, _ = run(capsys, "show", url, first)
    assert code == 0 and out.startswith(f"# Chat Session: {first}\n")
    assert "### 👤 User (" in out and "### 🤖 Assistant (" in out
    code, out, _ = run(capsys, "show", url, first, "--format", "text")
    assert out.startswith(f"Chat Session: {first}\n") and "] USER:\n" in out
    code, out, _ = run(capsys, "show", url, first, "--format", "json")
    exported = orjson.loads(out)
    assert exported["session_id"] == first and len(exported["messages"]) == 4

    code, out, _ = run(capsys, "stats", url)
    assert code == 0
    assert "Sessions:  3 (active 2, archived 1, expired 0)" in out
    assert "Messages:  9" in out and "Files:     1 (0 expired)" in out
    code, out, _ = run(capsys, "stats", url, "--json")
    counts = orjson.loads(out)
    assert counts["total_sessions"] == 3 and counts["store"] == url


def test_demo_defaults_to_sqlite_in_the_working_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert (tmp_path / "sessions.db").exists()
    assert f"sqlite:///{tmp_path}/sessions.db" in out


def test_demo_uses_the_configured_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_DATABASE_PATH", str(tmp_path / "configured.db"))
    assert run(capsys, "demo")[0] == 0
    assert (tmp_path / "configured.db").exists()
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nbackend = "file"\ndatabase_path = "{tmp_path}/folder"\n')
    monkeypatch.delenv("STORAGE_DATABASE_PATH")
    code, out, _ = run(capsys, "demo", "--config", str(config))
    assert code == 0 and f"file://{tmp_path}/folder" in out


def test_show_a_missing_session(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert run(capsys, "demo", "--url", url)[0] == 0
    code, out, err = run(capsys, "show", url, "no-such-id")
    assert code == 1 and out == ""
    assert err.strip() == f"kvsessions show: no session 'no-such-id' in {url}"


def test_cleanup(capsys: pytest.CaptureFixture[str], url: str) -> None:
    async def seed() -> None:
        async with SessionStorage.from_url(url) as storage:
            stale = ChatSession.create("m")
            stale.updated_at = datetime.now(UTC) - timedelta(hours=10)
            await storage.save_session(stale)
            await storage.save_session(ChatSession.create("m"))
            record = UploadedFileRecord.create("f", "u", "old.txt", 1, "text/plain")
            record.expires_at = record.uploaded_at - timedelta(seconds=1)
            await storage.save_file_record(record)

    asyncio.run(seed())
    code, out, _ = run(capsys, "cleanup", url, "--expiry-hours", "5")
    assert code == 0
    assert "Marked 1 session expired" in out and "Deleted 1 expired file record\n" in out
    code, out, _ = run(capsys, "cleanup", url)  # default 72 h: nothing more to do
    assert "Marked 0 sessions expired" in out and "72 h ago" in out
    code, out, _ = run(capsys, "stats", url)
    assert "(active 1, archived 0, expired 1)" in out


def test_errors_are_one_line_without_password(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ls", "postgresql://app:t0psecret@127.0.0.1:1/db")
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("kvsessions ls: error: ")
    assert "t0psecret" not in err and "Traceback" not in err
    code, _, err = run(capsys, "stats", "not-a-url")
    assert code == 2 and err.strip() == \
        "kvsessions stats: error: not a store URL: 'not-a-url' (expected scheme://...)"
    code, _, err = run(capsys, "show", "sqlite:///x.db?colour=blue", "id")
    assert code == 2 and "unknown option(s) colour" in err


def test_bad_arguments_exit_with_usage(capsys: pytest.CaptureFixture[str], url: str) -> None:
    for argv in (["ls", url, "--limit", "0"], ["ls", url, "--status", "gone"],
                 ["show", url, "x", "--format", "yaml"], ["cleanup", url, "--expiry-hours", "-1"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_the_installed_command_runs(tmp_path: Path) -> None:
    """``python -m kvsessions`` in a fresh process, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("STORAGE_")}
    result = subprocess.run([sys.executable, "-m", "kvsessions", "demo"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Demo data written to sqlite://" in result.stdout
