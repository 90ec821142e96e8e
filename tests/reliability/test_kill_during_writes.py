"""kill -9 during writes: an acknowledged document is never lost, a document is never torn.

For each adapter a child process (``writer_child.py``) writes documents with ``put``,
``put_many`` and ``SessionStorage.append_message``, printing an intent line before each call
and an acknowledgement after it returned; the test SIGKILLs it 20-300 ms after its first
acknowledgement, 20 times (x ``--soak``). After each kill the store is opened fresh and:

* every acknowledged document is there and equal (or replaced by a later intended write);
* every stored document decodes, meets its schema and its own checksum, and was written by
  the child (acknowledged or in flight);
* a session head counts the acknowledged appends (or one more, the one in flight);
* SQLite passes ``PRAGMA integrity_check``; the file store has no temp file left once opened.

For MongoDB (SecantusDB) and the other servers it is the *client* that is killed; the server
keeps running. A summary line per adapter is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.documents.keys import INDEX_PREFIX
from kvsessions.kv.registry import open_store
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.backends.redis import REDIS_URL, drop_namespaces
from tests.conftest import selected_backends
from tests.mongo_server import drop_collections, mongodb_url
from tests.reliability.writer_child import check_document, digest, round_prefix

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("writer_child.py")
ADAPTERS = ("file", "sqlite", "postgresql", "mongodb", "redis")
ROUNDS = 20
KILL_DELAY = (0.02, 0.3)  # seconds after the first acknowledgement
#: How long the child may stay silent before the test gives up on it (a hang, not a result).
SILENCE_LIMIT = 60.0
#: Counters that must stay 0.
FAULTS = ("lost", "changed", "phantom", "torn", "bad_head", "integrity", "temp_left",
          "not_killed")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "adapter" in metafunc.fixturenames:
        chosen = [name for name in selected_backends(metafunc.config) if name in ADAPTERS]
        metafunc.parametrize("adapter", chosen)


# ---------------------------------------------------------------------------------- targets

@dataclass
class Target:
    """Where the child writes: its URL, plus what the checks and the cleanup need."""

    url: str
    sqlite_path: Path | None = None
    folder: Path | None = None
    cleanup: Callable[[], None] = lambda: None


def _with_options(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + options


def make_target(adapter: str, tmp_path: Path) -> Target:
    namespace = "crash_" + uuid.uuid4().hex[:12]
    if adapter == "file":
        root = tmp_path / "files"
        return Target(f"file://{root}?namespace={namespace}", folder=root / namespace)
    if adapter == "sqlite":
        path = tmp_path / "crash.db"
        return Target(f"sqlite:///{path}?namespace={namespace}", sqlite_path=path)
    if adapter == "postgresql":
        return Target(_with_options(POSTGRES_URL, f"namespace={namespace}&max_pool_size=2"),
                      cleanup=lambda: asyncio.run(drop_tables(POSTGRES_URL, {namespace})))
    if adapter == "mongodb":
        return Target(_with_options(mongodb_url(), f"namespace={namespace}"),
                      cleanup=lambda: drop_collections({namespace}))
    assert adapter == "redis"
    return Target(_with_options(REDIS_URL, f"namespace={namespace}"),
                  cleanup=lambda: asyncio.run(drop_namespaces(REDIS_URL, {namespace})))


# ---------------------------------------------------------------------------------- child

class WriterChild:
    """The zygote process of ``writer_child.py`` and the lines it and its writers print."""

    def __init__(self, url: str, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(CHILD), url], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(orjson.loads(raw))
        self.lines.put(None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def next_line(self, timeout: float = SILENCE_LIMIT) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"writer child silent for {timeout:g} s:\n{self.stderr()}") from None
        if line is None:
            raise AssertionError(f"writer child exited early:\n{self.stderr()}")
        return line

    def run_round(self, round_number: int, seed: int, delay: float) -> tuple[
            list[dict[str, Any]], int]:
        """Start a writer, SIGKILL it ``delay`` s after its first acknowledgement; its lines
        (intents and acknowledgements, in order) and its exit status."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"run {round_number} {seed}\n".encode())
        self.process.stdin.flush()
        events: list[dict[str, Any]] = []
        pid: int | None = None
        kill_at: float | None = None
        killed = False
        while True:
            if kill_at is not None and not killed and pid is not None:
                remaining = kill_at - time.monotonic()
                if remaining <= 0:
                    os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still the writer
                    killed = True
                    continue
                try:
                    line = self.lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    raise AssertionError(f"writer child exited early:\n{self.stderr()}")
            else:
                line = self.next_line()
            if "started" in line:
                pid = line["started"]
            elif "reaped" in line:
                if not killed:
                    raise AssertionError(f"writer stopped before it was killed (status "
                                         f"{line['status']}):\n{self.stderr()}")
                return events, int(line["status"])
            elif "done" in line:
                raise AssertionError("writer stopped writing by itself")
            else:
                events.append(line)
                if "ack" in line and kill_at is None:
                    kill_at = time.monotonic() + delay

    def close(self) -> None:
        try:
            if self.process.stdin is not None and self.process.poll() is None:
                self.process.stdin.write(b"quit\n")
                self.process.stdin.close()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)


# ---------------------------------------------------------------------------------- ledger

@dataclass
class Ledger:
    """What the writers acknowledged, and what they were writing when killed."""

    acked: dict[str, str] = field(default_factory=dict)
    #: Digests intended for a key since its last acknowledgement (in flight at a kill).
    maybe: dict[str, set[str]] = field(default_factory=dict)
    #: Acknowledged appends per session, and whether one more was in flight at the kill.
    appends: dict[str, int] = field(default_factory=dict)
    append_in_flight: dict[str, bool] = field(default_factory=dict)

    def record(self, events: list[dict[str, Any]]) -> bool:
        """Fold one round's lines in; True when a call was in flight at the kill."""
        in_flight = False
        for line in events:
            docs: dict[str, str] = line["docs"]
            session = line.get("session")
            if "intent" in line:
                in_flight = True
                for key, digest in docs.items():
                    self.maybe.setdefault(key, set()).add(digest)
                if session is not None:
                    self.appends.setdefault(session, 0)
                    self.append_in_flight[session] = line["intent"] == "append"
            else:
                in_flight = False
                for key, digest in docs.items():
                    self.acked[key] = digest
                    self.maybe[key] = set()
                if line["ack"] == "append":
                    assert session is not None
                    self.appends[session] += 1
                if session is not None:
                    self.append_in_flight[session] = False
        return in_flight


async def verify(url: str, ledger: Ledger, prefixes: list[str]) -> Counter[str]:
    """Open the store fresh and compare what it holds under ``prefixes`` with the ledger."""
    faults: Counter[str] = Counter()
    store = open_store(url)
    async with store:
        stored: dict[str, bytes] = {}
        for prefix in prefixes:
            stored.update({key: value async for key, value in store.scan(prefix)})
    in_scope = [key for key in ledger.acked if any(key.startswith(p) for p in prefixes)]
    for key in in_scope:
        if key not in stored:
            faults["lost"] += 1
    for key, value in stored.items():
        if key.startswith(INDEX_PREFIX):
            continue  # index entries: checked by tests/test_listing*.py, not in the ledger
        document = check_document(key, value)
        if document is None:
            faults["torn"] += 1
            continue
        faults["documents"] += 1
        if document["kind"] == "session":
            count = ledger.appends.get(document["session_id"])
            allowed = () if count is None else (
                count, count + ledger.append_in_flight.get(document["session_id"], False))
            if document["message_count"] not in allowed:
                faults["bad_head"] += 1
            continue
        acceptable = ledger.maybe.get(key, set()) | (
            {ledger.acked[key]} if key in ledger.acked else set())
        if not acceptable:
            faults["phantom"] += 1
        elif digest(document) not in acceptable:
            faults["changed"] += 1
    return faults


def temp_files(folder: Path) -> int:
    return sum(name.startswith(".tmp-") for _, _, names in os.walk(folder) for name in names)


def integrity(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return ", ".join(str(row[0]) for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


# ---------------------------------------------------------------------------------- the test

def test_sigkill_during_writes_loses_nothing_acknowledged(
        adapter: str, tmp_path: Path, soak: int) -> None:
    target = make_target(adapter, tmp_path)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    ledger = Ledger()
    totals: Counter[str] = Counter()
    child = WriterChild(target.url, tmp_path / "child-stderr.txt")
    try:
        for round_number in range(ROUNDS * soak):
            events, status = child.run_round(round_number, rng.randrange(2**32),
                                             rng.uniform(*KILL_DELAY))
            totals["kills"] += 1
            totals["not_killed"] += status != -signal.SIGKILL
            totals["acks"] += sum("ack" in line for line in events)
            totals["in_flight_at_kill"] += ledger.record(events)
            if target.folder is not None:
                totals["temp_at_kill"] += temp_files(target.folder)
            prefix = round_prefix(round_number)
            totals.update(asyncio.run(verify(target.url, ledger,
                                             [f"message:{prefix}", f"session:{prefix}"])))
            if target.folder is not None:  # opened fresh by verify: dead writers' temps gone
                totals["temp_left"] += temp_files(target.folder)
            if target.sqlite_path is not None:
                result = integrity(target.sqlite_path)
                totals["integrity"] += result != "ok"
        # Last, everything at once: later rounds damaged nothing of earlier ones.
        final = asyncio.run(verify(target.url, ledger, [""]))
        for name in FAULTS:
            totals[name] += final[name]
        totals["final_documents"] = final["documents"]
    finally:
        child.close()
        target.cleanup()
    summary = ", ".join(f"{name}={totals[name]}" for name in (
        "kills", "acks", "in_flight_at_kill", "final_documents", "temp_at_kill", *FAULTS))
    print(f"\nkill -9 {adapter} (seed {seed}): {summary}")
    assert totals["acks"] > ROUNDS * soak, "the writer must get work acknowledged to be killed"
    faults = {name: totals[name] for name in FAULTS if totals[name]}
    assert not faults, f"{adapter}: {faults} (seed {seed}; {summary})"
