"""The command line explains itself to a newcomer (issue 15, item 8), checked through the
installed ``kvsessions`` command: a version, a description and argument help for every command,
visible ``-v``, one closing progress line in a log, an ETA on a terminal, counts in the
singular where they are one, the total of a listing, the configured store without a URL,
"Try:" lines that can be pasted, and an interrupted migration that says how to resume."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import kvsessions
from kvsessions.documents import codec
from kvsessions.documents import keys as layout
from kvsessions.documents.models import ChatSession, UploadedFileRecord
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.cli import KVSESSIONS, fill, run_kvsessions

COMMANDS = ["demo", "ls", "show", "stats", "cleanup", "migrate", "verify", "export", "import",
            "backup", "validate", "upgrade"]


def one_of_each() -> dict[str, bytes]:
    """One session with one message, and one file record."""
    session = ChatSession.create("gemini-2.5-flash")
    message = session.add_message("user", "hello")
    record = UploadedFileRecord.create("files/x", "https://files.example.invalid/x", "x.pdf",
                                       10, "application/pdf")
    return {
        layout.session_key(session.session_id):
            codec.encode_document(codec.session_to_document(session)),
        layout.message_key(session.session_id, message.message_id):
            codec.encode_document(codec.message_to_document(message)),
        layout.file_key(record.file_id): codec.encode_document(codec.file_to_document(record)),
    }


@pytest.fixture
def demo_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/demo.db"
    done = run_kvsessions("demo", "--url", url)
    assert done.returncode == 0, done.stderr
    return url


def session_ids(listing: str) -> list[str]:
    return re.findall(r"^([0-9a-f]{8}-[0-9a-f-]{27})  ", listing, flags=re.M)


def test_version() -> None:
    done = run_kvsessions("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"kvsessions {kvsessions.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_and_help_for_each_argument(command: str) -> None:
    done = run_kvsessions(command, "--help")
    assert done.returncode == 0
    text = done.stdout
    usage_end = text.index("\n\n")
    description = text[usage_end:text.find("\npositional arguments:")].strip()
    if "options:" in description:
        description = description[:description.index("options:")].strip()
    assert len(description) > 30, f"`kvsessions {command}` has no description"
    if "positional arguments:" in text:
        block = text.split("positional arguments:\n", 1)[1].split("\n\n", 1)[0]
        # An argument's line, then its help: on the same line or indented on the next ones.
        for entry in re.split(r"\n(?=  \S)", block):
            name, _, help_text = entry.strip().partition(" ")
            assert help_text.strip(), f"`kvsessions {command}`: {name} has no help"


def test_ls_says_what_a_status_may_be() -> None:
    text = run_kvsessions("ls", "--help").stdout
    help_of_status = " ".join(text.split("--status", 1)[1].split())
    assert "active, archived, expired" in help_of_status


def test_verbose_logs_what_is_opened_and_done(demo_url: str) -> None:
    quiet = run_kvsessions("stats", demo_url)
    loud = run_kvsessions("-v", "stats", demo_url)
    assert quiet.returncode == loud.returncode == 0 and quiet.stdout == loud.stdout
    assert "INFO" not in quiet.stderr
    assert "INFO" in loud.stderr and "opened" in loud.stderr and "stats done" in loud.stderr


def test_without_a_terminal_progress_is_one_closing_line(tmp_path: Path, demo_url: str) -> None:
    done = run_kvsessions("export", demo_url, str(tmp_path / "out.jsonl"))
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("export: ")]
    assert len(progress) == 1, progress
    assert re.fullmatch(r"export: [\d,]+ documents, [\d,]+ docs/s", progress[0]), progress


def test_show_json_ends_with_a_newline(demo_url: str) -> None:
    first = session_ids(run_kvsessions("ls", demo_url).stdout)[0]
    done = run_kvsessions("show", demo_url, first, "--format", "json")
    assert done.returncode == 0 and done.stdout.endswith("}\n")
    assert orjson.loads(done.stdout)["session_id"] == first


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    source, destination = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    fill(source, one_of_each())
    done = run_kvsessions("migrate", source, destination, "-q")
    assert done.returncode == 0, done.stderr
    assert "copied 3 documents (1 session, 1 message, 1 file) in" in done.stdout


def test_ls_gives_the_total(demo_url: str) -> None:
    done = run_kvsessions("ls", demo_url, "--limit", "2")
    assert len(session_ids(done.stdout)) == 2
    assert "\n2 of 3 sessions in sqlite:" in done.stdout and "--limit shows more" in done.stdout
    done = run_kvsessions("ls", demo_url, "--status", "active", "--limit", "1")
    assert "1 of 2 active sessions in" in done.stdout


def test_ls_show_stats_read_the_configured_store(demo_url: str, tmp_path: Path) -> None:
    env = {"STORAGE_URL": demo_url}
    listing = run_kvsessions("ls", env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    made = session_ids(listing.stdout)
    assert len(made) == 3 and "\n3 sessions in sqlite:" in listing.stdout
    shown = run_kvsessions("show", made[0], env=env, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith(f"# Chat Session: {made[0]}")
    counted = run_kvsessions("stats", env=env, cwd=tmp_path)
    assert "Sessions:  3 (active 2, archived 1, expired 0)" in counted.stdout
    # Also the seed's variables, and a configuration file.
    path = demo_url.removeprefix("sqlite:///")
    seed_style = run_kvsessions("stats", env={"STORAGE_BACKEND": "sqlite",
                                              "STORAGE_DATABASE_PATH": path}, cwd=tmp_path)
    assert "Sessions:  3 (" in seed_style.stdout
    config = tmp_path / "kv.toml"
    config.write_text(f'[storage]\nurl = "{demo_url}"\n')
    from_file = run_kvsessions("stats", "--config", str(config), cwd=tmp_path)
    assert "Sessions:  3 (" in from_file.stdout


@pytest.fixture
def postgres_namespace() -> Iterator[str]:
    table = "try_" + uuid.uuid4().hex[:12]
    yield table
    asyncio.run(drop_tables(POSTGRES_URL, {table}))


def test_try_lines_never_hold_a_masked_password(tmp_path: Path, postgres_namespace: str) -> None:
    # The test server trusts every login: any password works, and none may be printed.
    with_password = POSTGRES_URL.replace("postgresql://postgres@",
                                         "postgresql://postgres:pw-123@", 1)
    assert with_password != POSTGRES_URL
    url = f"{with_password}?namespace={postgres_namespace}"
    for env, argv in (({}, ["--url", url]), ({"STORAGE_URL": url}, [])):
        done = run_kvsessions("demo", *argv, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        tries = done.stdout.split("\nTry", 1)[1].splitlines()[1:]
        assert len(tries) == 3 and "***" not in done.stdout.split("\nTry", 1)[1]
        assert "pw-123" not in done.stdout
        # Pasted as printed (adding the password where they say so), they work.
        for line in tries:
            words = line.split()[1:]
            argv_pasted = [w.strip("'").replace("postgres@", "postgres:pw-123@") for w in words]
            pasted = run_kvsessions(*argv_pasted, env=env, cwd=tmp_path)
            assert pasted.returncode == 0, (line, pasted.stderr)


def _on_a_terminal(*argv: str) -> tuple[int, str]:
    """Run ``kvsessions`` with stderr on a pseudo-terminal; exit code and what it showed."""
    controller, terminal = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_")}
    process = subprocess.Popen([str(KVSESSIONS), *argv], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=terminal, env=environment)
    os.close(terminal)
    shown = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 120)
        if not ready:
            process.kill()
            break
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command has ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=60), shown.decode(errors="replace")


@pytest.mark.parametrize("command", ["validate", "import", "upgrade"])
def test_validate_import_and_upgrade_show_an_eta(tmp_path: Path, command: str) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    documents: dict[str, bytes] = {}
    for _ in range(100):
        documents.update(one_of_each())
    fill(url, documents)
    argv = [command, url]
    if command == "import":
        export = tmp_path / "export.jsonl"
        assert run_kvsessions("export", url, str(export), "-q").returncode == 0
        argv = [command, f"sqlite:///{tmp_path}/copy.db", str(export)]

    code, shown = _on_a_terminal(*argv, "--batch-size", "1", "--progress-interval", "0")

    assert code == 0, shown
    assert re.search(r"300/300 docs +100%  [\d,]+ docs/s  ETA \d+:\d\d", shown), shown[-500:]


def test_an_interrupted_migration_says_that_running_it_again_resumes(tmp_path: Path) -> None:
    source, destination = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    fill(source, {f"k{i:06d}": b'{"n": 1}' for i in range(20_000)})
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_")}
    process = subprocess.Popen(
        [str(KVSESSIONS), "migrate", source, destination, "--batch-size", "20",
         "--progress-interval", "0", "--no-validate"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("migrate: "):
            process.send_signal(signal.SIGINT)
            break
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    last = rest.strip().splitlines()[-1]
    assert last == ("kvsessions migrate: interrupted; run the same command again to resume "
                    "where it stopped")
    again = run_kvsessions("migrate", source, destination, "-q", "--no-validate")
    assert again.returncode == 0 and "resumed after" in again.stdout
