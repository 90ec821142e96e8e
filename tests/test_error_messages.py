"""Errors a newcomer meets read as one short line about their own input, not as internals
(issue 15, item 9): a file error names the user's path, a validation error names every allowed
value, a configuration shows the backend its URL chooses, and an unreachable MongoDB fails at
once in one short line, as PostgreSQL and Redis do."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from kvsessions.config import StorageConfig
from kvsessions.documents import codec
from kvsessions.documents.models import ChatSession
from kvsessions.documents.validation import validate_document
from kvsessions.errors import ValidationError
from tests.cli import fill, one_error_line, run_kvsessions
from tests.test_migration import sample_documents

SECRET = "s3cret-pass"


def test_an_enum_error_names_every_allowed_value() -> None:
    session = ChatSession.create("gemini-2.5-flash")
    message = session.add_message("user", "hello")
    document = orjson.loads(codec.encode_document(codec.message_to_document(message)))
    document["role"] = "robot"
    with pytest.raises(ValidationError) as caught:
        validate_document(document)
    assert caught.value.reason == '"robot" is not one of "user", "assistant", "system", "tool"'
    assert caught.value.path == "role"


@pytest.mark.parametrize(("url", "backend"), [
    (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis"),
    (f"postgresql://app:{SECRET}@db/sessions", "postgresql"),
    ("mongodb://127.0.0.1/app", "mongodb"),
    ("file:///srv/sessions", "file"),
    ("sqlite:////srv/app/sessions.db", "sqlite"),
])
def test_a_config_given_a_url_shows_the_backend_the_url_chooses(url: str, backend: str) -> None:
    shown = repr(StorageConfig(url=url))
    assert f"backend={backend!r}" in shown and SECRET not in shown


@pytest.mark.parametrize("command", ["export", "backup", "import"])
def test_a_file_error_is_one_line_naming_the_users_path(tmp_path: Path, command: str) -> None:
    url = f"sqlite:///{tmp_path}/source.db"
    fill(url, sample_documents(sessions=1, messages=1, files=0))
    target = tmp_path / "missing-folder" / "out.jsonl"
    if command == "backup":
        (tmp_path / "file").write_text("not a folder")
        target = tmp_path / "file" / "backups"

    line = one_error_line(run_kvsessions(command, url, str(target)), command)

    assert str(target) in line and ".partial" not in line


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_mongodb_is_one_short_line_without_waiting() -> None:
    # Timeouts of 300 s: a command that waits for them is stopped by the subprocess timeout.
    url = f"mongodb://app:{SECRET}@127.0.0.1:{_closed_port()}/db?connect_timeout=300"
    done = run_kvsessions("ls", url, timeout=60)
    line = one_error_line(done, "ls")
    assert "connection refused" in line and SECRET not in line
    assert len(line) < 250 and "Topology" not in line


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_mongodb_that_never_answers_is_one_short_line(silent_server: int) -> None:
    url = f"mongodb://app:{SECRET}@127.0.0.1:{silent_server}/db?connect_timeout=0.5"
    done = run_kvsessions("ls", url, timeout=60)
    line = one_error_line(done, "ls")
    assert SECRET not in line and "Topology" not in line and len(line) < 300
