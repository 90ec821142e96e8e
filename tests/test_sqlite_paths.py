"""SQLite paths land where the user means (issue 15, items 1 and 2): ``sqlite:///rel.db`` in the
working folder as SQLAlchemy reads it, ``sqlite:////abs.db`` absolute, a bare path as a store
argument; the demo's "Try:" lines open the file the demo wrote, from any folder; and a URL is
printed as the user typed it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from kvsessions.kv.registry import open_store
from kvsessions.kv.sqlite import SQLiteStore
from tests.cli import run_kvsessions


def session_ids(listing: str) -> list[str]:
    return re.findall(r"^([0-9a-f]{8}-[0-9a-f-]{27})  ", listing, flags=re.M)


def test_the_url_forms_open_the_files_they_name() -> None:
    for url, path in [("sqlite:///chat.db", Path("chat.db").absolute()),
                      ("sqlite:///./data/chat.db", Path("data/chat.db").absolute()),
                      ("sqlite:////srv/app/chat.db", Path("/srv/app/chat.db")),
                      ("sqlite:///:memory:", ":memory:")]:
        store = open_store(url)
        assert isinstance(store, SQLiteStore) and store.path == str(path), url


def test_relative_absolute_and_bare_paths_name_one_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    made = run_kvsessions("demo", "--url", "sqlite:///data/chat.db", cwd=work)
    assert made.returncode == 0, made.stderr
    assert (work / "data" / "chat.db").is_file()
    expected = sorted(session_ids(made.stdout))
    assert len(expected) == 3

    for argument, cwd in [("sqlite:///data/chat.db", work), ("sqlite:///./data/chat.db", work),
                          ("data/chat.db", work), (f"sqlite:///{work}/data/chat.db", tmp_path),
                          (f"{work}/data/chat.db", tmp_path),
                          ("sqlite:///work/data/chat.db", tmp_path)]:
        listing = run_kvsessions("ls", argument, cwd=cwd)
        assert listing.returncode == 0, (argument, listing.stderr)
        assert sorted(session_ids(listing.stdout)) == expected, argument
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # no stray database anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_the_demo_try_lines_open_the_file_the_demo_wrote(tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    made = run_kvsessions("demo", cwd=work)
    assert made.returncode == 0, made.stderr
    assert (work / "sessions.db").is_file()
    tries = made.stdout.split("\nTry:\n", 1)[1].splitlines()
    assert [line.split()[1] for line in tries] == ["ls", "show", "stats"]
    for line in tries:
        done = run_kvsessions(*shlex.split(line)[1:], cwd=elsewhere)
        assert done.returncode == 0, (line, done.stderr)
    listing = run_kvsessions(*shlex.split(tries[0])[1:], cwd=elsewhere)
    assert sorted(session_ids(listing.stdout)) == sorted(session_ids(made.stdout))
    assert list(elsewhere.iterdir()) == []


def test_the_cli_prints_a_url_as_typed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/app/x.db"  # four slashes: an absolute path
    assert url.startswith("sqlite:////")
    made = run_kvsessions("demo", "--url", url)
    assert made.returncode == 0, made.stderr
    assert f"Demo data written to {url}\n" in made.stdout
    first = session_ids(made.stdout)[0]
    for argv, shown in [(["ls", url], f"3 sessions in {url}\n"),
                        (["stats", url], f"Store:     {url}\n"),
                        (["cleanup", url], f"Store: {url}\n")]:
        done = run_kvsessions(*argv)
        assert done.returncode == 0 and shown in done.stdout, (argv, done.stdout)
    missing = run_kvsessions("show", url, first + "0")
    assert missing.returncode == 1 and f"in {url}\n" in missing.stderr
