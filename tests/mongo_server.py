"""A MongoDB-protocol server for the tests and the bench: SecantusDB, started on demand.

``mongodb_url()`` returns ``KVSESSIONS_TEST_MONGODB_URL`` when it is set (a real server);
otherwise it starts one SecantusDB per process (each xdist worker gets its own) on a free
loopback port, in memory and ``--standalone`` (its replica-set mode slows down after many
inserts and deletes, see PERF-NOTES), and stops it when the process exits. A server that does
not come up is an error, never a skip.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from tests.net import accepts, free_port

__all__ = ["SecantusServer", "drop_collections", "mongodb_url"]

ENV_URL = "KVSESSIONS_TEST_MONGODB_URL"
DATABASE = "kvsessions_test"
START_TIMEOUT = 60.0


class SecantusServer:
    """One SecantusDB process on 127.0.0.1; ``url`` is set once it accepts connections."""

    def __init__(self, *, cache_size: str = "256M", standalone: bool = True) -> None:
        self.cache_size = cache_size
        self.standalone = standalone
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> str:
        self.port = free_port()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "secantus", *(["--standalone"] if self.standalone else []),
             "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", ":memory:",
             "--cache-size", self.cache_size, "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir())
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                log = self._read_log()
                self.stop()
                raise RuntimeError(f"SecantusDB exited with code {self.process.returncode} "
                                   f"before accepting connections:\n{log}")
            if accepts(self.port) and _answers_hello(self.url):
                return self.url
            if time.monotonic() > deadline:
                log = self._read_log()
                self.stop()
                raise RuntimeError(f"SecantusDB did not accept connections on port {self.port} "
                                   f"within {START_TIMEOUT:.0f} s:\n{log}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:].decode("utf-8", "replace")

    def __enter__(self) -> SecantusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_server: SecantusServer | None = None
_sync_client: Any = None


def mongodb_url() -> str:
    """The URL of the MongoDB server for this test process (started on first call)."""
    global _server
    configured = os.environ.get(ENV_URL)
    if configured:
        return configured
    if _server is None:
        server = SecantusServer()
        server.start()
        atexit.register(server.stop)
        _server = server
    return _server.url


def drop_collections(names: set[str] | list[str]) -> None:
    """Drop test collections with a synchronous client (usable from any teardown)."""
    global _sync_client
    if not names:
        return
    import pymongo

    if _sync_client is None:
        _sync_client = pymongo.MongoClient(mongodb_url(), serverSelectionTimeoutMS=10_000)
        atexit.register(_sync_client.close)
    database = _sync_client.get_default_database(DATABASE)
    for name in names:
        database.drop_collection(name)


def _answers_hello(url: str) -> bool:
    import pymongo

    client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=2000,
                                      connectTimeoutMS=2000)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


if __name__ == "__main__":  # a server for manual poking: python tests/mongo_server.py
    with SecantusServer() as running:
        print(running.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
