"""Private servers for tests that must stop, restart or reconfigure one.

The shared PostgreSQL (5432) and Redis (6379) serve every other test at the same time, so a
test that takes a server down starts its own here: a PostgreSQL cluster made by ``initdb`` in a
temp dir, a ``redis-server`` child, a SecantusDB child with its data on disk. Each listens on a
free loopback port that stays the same across ``stop()`` / ``start()``, so a store opened on it
sees the very same address come back. Every wait is bounded; ``close()`` stops the process and
removes its folder. A server that cannot be started raises (a missing server is a failure).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from tests.net import accepts, free_port

__all__ = ["PrivatePostgres", "PrivateRedis", "PrivateSecantus", "free_port"]

START_TIMEOUT = 60.0


def _wait_until_closed(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while accepts(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} still accepts connections after {timeout:.0f} s")
        time.sleep(0.05)


# ------------------------------------------------------------------------------ PostgreSQL


def _postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian layout, or PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb) found: install postgresql")
    return Path(initdb).parent


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1:``port``, trust auth, user ``postgres``.

    initdb refuses to run as root, so under root every server command runs as the ``postgres``
    OS user (``runuser``) in a temp dir that user owns.
    """

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.settings = {"listen_addresses": "127.0.0.1", "max_connections": "40",
                         "shared_buffers": "16MB", **(settings or {})}
        self.root = Path(tempfile.mkdtemp(prefix="kvs-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E",
                  "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        self.running = False

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str, timeout: float = START_TIMEOUT) -> str:
        command = [*self._as_postgres, str(self.bin / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, cwd=self.root, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): "
                               f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n"
                               f"{self.read_log()}")
        return result.stdout

    def start(self) -> None:
        options = " ".join([f"-p {self.port}", f"-k {self.root}",
                            *(f"-c {name}={value}" for name, value in self.settings.items())])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t",
                  str(int(START_TIMEOUT)), "-o", options, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects clients and shuts down cleanly; ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t",
                  str(int(START_TIMEOUT)), "stop")
        self.running = False
        _wait_until_closed(self.port)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` through psql over the socket (as a superuser); its output."""
        return self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-Atqc", sql)

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ child servers


class _ChildServer:
    """A server that runs as our child process on a fixed port; its output goes to a file."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"kvs-{self.name}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return accepts(self.port)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} on port {self.port} is already running")
        self._log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=self.root)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with code {code} before accepting "
                                   f"connections on {self.port}:\n{self.read_log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not come up on port {self.port} within "
                                   f"{START_TIMEOUT:.0f} s:\n{self.read_log()}")
            time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL (a crash); returns once the port is closed."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if process is not None:
            _wait_until_closed(self.port)

    def read_log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        try:
            self.stop(kill=True)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis(_ChildServer):
    """``redis-server`` on 127.0.0.1:``port``; by default no persistence at all, as the brief
    of each test wants it spelled out (``--appendonly yes`` etc. come in ``config``)."""

    name = "redis"

    def __init__(self, *config: str) -> None:
        super().__init__()
        self.config = list(config)
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            raise RuntimeError("redis-server is not installed")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        assert self.executable is not None
        return [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.root), "--save", "", "--appendonly", "no",
                "--daemonize", "no", *self.config]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrivateSecantus(_ChildServer):
    """SecantusDB (a MongoDB-protocol server) with its data on disk, so it survives restarts."""

    name = "secantus"

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/kvsessions_test"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "secantus", "--standalone", "--host", "127.0.0.1",
                "--port", str(self.port), "--storage-path", str(self.root / "data"),
                "--cache-size", "64M", "--log-level", "WARNING"]

    def ready(self) -> bool:
        if not accepts(self.port):
            return False
        import pymongo

        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
        try:
            client.admin.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()

    def __enter__(self) -> PrivateSecantus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
