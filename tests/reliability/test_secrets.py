"""A password in a store URL never shows: not in an exception (its message, its whole chain, its
formatted traceback), not in a log record at DEBUG (ours and the drivers'), not in a warning, not
in ``repr``/``str`` of stores, storages and ``StorageConfig``, not in the CLI's output.

Every URL below carries the password ``S3cr3t!@#`` (percent-encoded in the userinfo, or as
``?password=``, or even left unencoded, which breaks the URL at ``#``) and then fails: an
unreachable port, a host that does not resolve, a server that refuses the credentials, a driver
that is not installed, a malformed URL. The search is for ``s3cr3t`` in any case, the prefix of
every form the password can take (raw, percent-encoded, cut at the ``#``).

Set ``KVSESSIONS_RELIABILITY_REPORT=/path/file.jsonl`` to get one line per case and channel
with the number of occurrences found (the table of the reliability report).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from kvsessions.errors import KVSessionsError

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "S3cr3t!@#"
ENCODED = quote(PASSWORD, safe="")  # S3cr3t%21%40%23
MINIMAL = "S3cr3t!%40%23"  # only what the userinfo needs encoded
MARKER = re.compile("s3cr3t", re.IGNORECASE)
#: The driver each scheme needs: hidden (``sys.modules[name] = None``) for "missing driver".
DRIVERS = {"postgresql": "asyncpg", "mongodb": "pymongo", "redis": "redis",
           "redis+cluster": "redis", "sqlite": "aiosqlite"}
PROCESS_TIMEOUT = 60.0


def occurrences(text: str) -> int:
    return len(MARKER.findall(text))


def report(case: str, channel: str, count: int) -> None:
    path = os.environ.get("KVSESSIONS_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": "secrets", "case": case, "channel": channel,
                                  "count": count}) + "\n")


# ---------------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Case:
    adapter: str  # the URL scheme
    fault: str
    url: str
    #: False where the server accepts the URL (Redis's passwordless default user takes any
    #: AUTH password): the password must still stay out of sight.
    fails: bool = True
    #: A Redis URL for the cache tier (``open_store(url, cache_url=...)``, ``STORAGE_CACHE_URL``).
    cache_url: str | None = None

    @property
    def name(self) -> str:
        return f"{self.adapter}-{self.fault}"


def _server_urls() -> dict[str, str]:
    """host:port of the shared test servers (env overrides honoured); MongoDB is started."""
    from tests.backends.postgresql import POSTGRES_URL
    from tests.backends.redis import REDIS_CLUSTER_URL, REDIS_URL
    from tests.mongo_server import mongodb_url

    return {"postgresql": POSTGRES_URL, "mongodb": mongodb_url(), "redis": REDIS_URL,
            "redis+cluster": REDIS_CLUSTER_URL}


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def build_cases(tmp: Path) -> list[Case]:
    servers = _server_urls()
    pg, mongo, redis, cluster = (_hostport(servers[name]) for name in
                                 ("postgresql", "mongodb", "redis", "redis+cluster"))
    mongo_db = urlsplit(servers["mongodb"]).path or "/kvsessions_test"
    fast_pg = "connect_timeout=2"
    fast = "connect_timeout=1"
    cases = [
        # PostgreSQL (trust auth accepts any password, so bad auth is an unknown role)
        Case("postgresql", "unreachable", f"postgresql://kvs_user:{ENCODED}@127.0.0.1:1/test"
             f"?{fast_pg}"),
        Case("postgresql", "bad-host", f"postgresql://kvs_user:{MINIMAL}@kvs-nohost.invalid"
             f"/test?{fast_pg}"),
        Case("postgresql", "bad-auth", f"postgresql://kvs_no_such_role:{ENCODED}@{pg}/test"
             f"?{fast_pg}"),
        Case("postgresql", "bad-auth-query", f"postgresql://kvs_no_such_role@{pg}/test"
             f"?password={ENCODED}&{fast_pg}"),
        Case("postgresql", "bad-port", f"postgresql://kvs_user:{ENCODED}@127.0.0.1:99999/t"),
        Case("postgresql", "unknown-option", f"postgresql://kvs_user:{ENCODED}@{pg}/test"
             f"?kvs_bogus_option=1&{fast_pg}"),
        Case("postgresql", "unencoded", f"postgresql://kvs_user:{PASSWORD}@{pg}/test"),
        # MongoDB (SecantusDB checks credentials)
        Case("mongodb", "unreachable", f"mongodb://kvs_user:{ENCODED}@127.0.0.1:1/db?{fast}"),
        Case("mongodb", "bad-host", f"mongodb://kvs_user:{MINIMAL}@kvs-nohost.invalid/db"
             f"?{fast}"),
        Case("mongodb", "bad-auth", f"mongodb://kvs_user:{ENCODED}@{mongo}{mongo_db}?{fast}"),
        Case("mongodb", "bad-auth-query", f"mongodb://kvs_user@{mongo}{mongo_db}"
             f"?password={ENCODED}&{fast}"),
        Case("mongodb", "bad-port", f"mongodb://kvs_user:{ENCODED}@127.0.0.1:99999/db"),
        Case("mongodb", "unknown-option", f"mongodb://kvs_user:{ENCODED}@{mongo}{mongo_db}"
             f"?kvs_bogus_option=1"),
        Case("mongodb", "unencoded", f"mongodb://kvs_user:{PASSWORD}@{mongo}{mongo_db}"),
        # Redis (the shared server has no password: AUTH with one fails)
        Case("redis", "unreachable", f"redis://:{ENCODED}@127.0.0.1:1/0?{fast}"),
        Case("redis", "bad-host", f"redis://:{MINIMAL}@kvs-nohost.invalid:6379/0?{fast}"),
        Case("redis", "accepted-auth", f"redis://:{ENCODED}@{redis}/0?{fast}", fails=False),
        Case("redis", "bad-auth", f"redis://kvs_user:{MINIMAL}@{redis}/0?{fast}"),
        Case("redis", "bad-auth-query", f"redis://{redis}/0?password={ENCODED}&{fast}"),
        Case("redis", "bad-port", f"redis://:{ENCODED}@127.0.0.1:99999/0"),
        Case("redis", "unknown-option", f"redis://:{ENCODED}@{redis}/0?kvs_bogus_option=1"),
        Case("redis", "unencoded", f"redis://kvs_user:{PASSWORD}@{redis}/0"),
        # Redis Cluster
        Case("redis+cluster", "unreachable", f"redis+cluster://:{ENCODED}@127.0.0.1:1"
             f"?{fast}"),
        Case("redis+cluster", "bad-auth", f"redis+cluster://kvs_user:{ENCODED}@{cluster}"
             f"?{fast}"),
        Case("redis+cluster", "bad-auth-query", f"redis+cluster://{cluster}"
             f"?password={ENCODED}&{fast}"),
        Case("redis+cluster", "bad-port", f"redis+cluster://:{ENCODED}@127.0.0.1:99999"),
        # Embedded stores have no password: one in the URL is refused, unprinted
        Case("sqlite", "userinfo", f"sqlite://kvs_user:{ENCODED}@localhost{tmp}/s.db"),
        Case("sqlite", "query", f"sqlite:///{tmp}/s.db?password={ENCODED}"),
        Case("file", "userinfo", f"file://kvs_user:{ENCODED}@localhost{tmp}/files"),
        Case("file", "query", f"file://{tmp}/files?password={ENCODED}"),
        Case("unknown", "scheme", f"kvsnosuchdb://kvs_user:{ENCODED}@127.0.0.1/db"),
        # The cache tier's Redis URL (the store itself is a plain SQLite file)
        Case("cache", "unreachable", f"sqlite:///{tmp}/c1.db",
             cache_url=f"redis://kvs_user:{ENCODED}@127.0.0.1:1/0"),
        Case("cache", "bad-auth", f"sqlite:///{tmp}/c2.db",
             cache_url=f"redis://kvs_user:{MINIMAL}@{redis}/0"),
    ]
    for scheme, driver in DRIVERS.items():
        base = {"postgresql": f"postgresql://kvs_user:{ENCODED}@{pg}/test",
                "mongodb": f"mongodb://kvs_user:{ENCODED}@{mongo}{mongo_db}",
                "redis": f"redis://:{ENCODED}@{redis}/0",
                "redis+cluster": f"redis+cluster://:{ENCODED}@{cluster}",
                "sqlite": f"sqlite:///{tmp}/d.db?password={ENCODED}"}[scheme]
        cases.append(Case(scheme, f"missing-{driver}", base))
    return cases


# ---------------------------------------------------------------------- one probe

def exception_text(exc: BaseException) -> str:
    """Everything an exception can show: the formatted traceback (with its chain) and, for
    every exception reachable through ``__cause__``/``__context__`` (suppressed or not), its
    repr, str, args and attributes."""
    parts = ["".join(traceback.format_exception(exc))]
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        parts += [repr(current), str(current), repr(current.args)]
        with contextlib.suppress(Exception):
            parts.append(repr(vars(current)))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
    return "\n".join(parts)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.args))


@contextlib.contextmanager
def everything_logged() -> Iterator[_Records]:
    """Every log record of every logger at DEBUG (the drivers' included), and every warning."""
    root = logging.getLogger()
    handler = _Records()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler
        handler.lines += [str(w.message) for w in caught]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def probe(url: str, cache_url: str | None = None) -> dict[str, Any]:
    """Use ``url`` every way a program would, and return what each channel showed:
    {"channels": {name: text}, "errors": [exception class names]}."""
    from kvsessions.config import StorageConfig
    from kvsessions.kv.registry import open_store
    from kvsessions.sessions.storage import SessionStorage

    channels: dict[str, list[str]] = {"exceptions": [], "repr": [], "logs": []}
    errors: list[str] = []

    def failed(exc: BaseException) -> None:
        errors.append(type(exc).__name__)
        channels["exceptions"].append(exception_text(exc))

    with everything_logged() as logs:
        try:
            store = open_store(url, cache_url=cache_url)
        except Exception as exc:
            failed(exc)
        else:
            storage = SessionStorage(store)
            channels["repr"] += [repr(store), str(store), repr(storage), str(storage)]
            for step in (store.open, lambda: store.get("k"), storage.list_sessions):
                try:
                    await asyncio.wait_for(step(), 30)
                except Exception as exc:
                    failed(exc)
            channels["repr"] += [repr(store), str(store)]
            with contextlib.suppress(Exception):
                await store.close()
        environ = {"STORAGE_URL": url, **({"STORAGE_CACHE_URL": cache_url} if cache_url else {})}
        builds: list[Callable[[], StorageConfig]] = [
            lambda: StorageConfig(url=url, cache_url=cache_url),
            lambda: StorageConfig.from_env(environ),
            lambda: StorageConfig(backend=_backend_of(url), connection_string=url)]
        for build in builds:
            try:
                config = build()
            except Exception as exc:
                failed(exc)
                continue
            channels["repr"] += [repr(config), str(config), config.redacted_url]
    channels["logs"] = logs.lines
    return {"channels": {k: "\n".join(v) for k, v in channels.items()}, "errors": errors}


def _backend_of(url: str) -> str:
    scheme = url.partition("://")[0]
    return {"redis+cluster": "redis", "postgresql": "postgresql",
            "mongodb": "mongodb"}.get(scheme, scheme)


def probe_main(url: str) -> None:
    """Entry point of the child process: the probe's findings as JSON on stdout."""
    print(json.dumps(asyncio.run(probe(url))))


def run_child(code: str, *, hide: str | None = None, timeout: float = PROCESS_TIMEOUT,
              ) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (with the driver ``hide`` made unimportable)."""
    prelude = "import sys\n"
    if hide is not None:
        prelude += f"sys.modules[{hide!r}] = None\n"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-c", prelude + code], cwd=REPO, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# ---------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_cases(tmp_path_factory.mktemp("secrets"))


def _found(case: Case, result: dict[str, Any], prefix: str = "") -> dict[str, int]:
    counts = {}
    for channel, text in result["channels"].items():
        counts[prefix + channel] = count = occurrences(text)
        report(case.name, prefix + channel, count)
    return counts


def _leaks(case: Case, result: dict[str, Any], counts: dict[str, int]) -> str:
    shown = {channel: [line for line in text.splitlines() if MARKER.search(line)][:5]
             for channel, text in result["channels"].items() if MARKER.search(text)}
    return f"{case.name}: password found {counts}: {shown}"


async def test_password_never_shows_in_process(cases: list[Case]) -> None:
    """In-process: exceptions and their chains, DEBUG logs, warnings, repr/str of stores,
    storages and configs. Every case must also fail with one of our errors."""
    failures = []
    for case in cases:
        if case.fault.startswith("missing-"):
            continue
        result = await probe(case.url, case.cache_url)
        counts = _found(case, result)
        if any(counts.values()):
            failures.append(_leaks(case, result, counts))
        if case.fails and not result["errors"]:
            failures.append(f"{case.name}: nothing failed (the case does not test a fault)")
        untyped = [name for name in result["errors"] if not _ours(name)]
        if untyped:
            failures.append(f"{case.name}: raised {untyped}, not KVSessionsError")
    assert not failures, "\n".join(failures)


def _ours(name: str) -> bool:
    import kvsessions.errors
    import kvsessions.sessions.storage

    cls = getattr(kvsessions.errors, name, None) or getattr(kvsessions.sessions.storage, name, None)
    return isinstance(cls, type) and issubclass(cls, KVSessionsError)


def test_password_never_shows_with_a_missing_driver(cases: list[Case]) -> None:
    """The driver is made unimportable in a child process: MissingDependencyError, and the
    password nowhere."""
    missing = [case for case in cases if case.fault.startswith("missing-")]
    assert len(missing) == len(DRIVERS)

    def one(case: Case) -> str | None:
        driver = case.fault.removeprefix("missing-")
        code = (f"from tests.reliability.test_secrets import probe_main\n"
                f"probe_main({case.url!r})\n")
        child = run_child(code, hide=driver)
        if child.returncode != 0:
            return f"{case.name}: the probe crashed: {child.stderr[-2000:]}"
        result = json.loads(child.stdout)
        result["channels"]["stderr"] = child.stderr
        counts = _found(case, result)
        if any(counts.values()):
            return _leaks(case, result, counts)
        # SQLite has no password: the URL's is refused (ConfigError) before the driver counts.
        expected = "ConfigError" if case.adapter == "sqlite" else "MissingDependencyError"
        if expected not in result["errors"]:
            return f"{case.name}: expected {expected}, got {result['errors']}"
        return None

    with ThreadPoolExecutor(3) as pool:
        failures = [failure for failure in pool.map(one, missing) if failure]
    assert not failures, "\n".join(failures)


CLI_COMMANDS: list[tuple[str, ...]] = [
    ("ls", "{url}"),
    ("stats", "{url}"),
    ("migrate", "{url}", "{other}"),
    ("migrate", "{other}", "{url}"),
    ("verify", "{url}", "{other}"),
    ("export", "{url}", "{file}"),
    ("-v", "ls", "{url}"),
]


def test_password_never_shows_in_cli_output(cases: list[Case], tmp_path: Path,
                                           soak: int) -> None:
    """``python -m kvsessions`` (and the same with DEBUG logging configured first) for every
    case: stdout and stderr. Each case runs one command, the cases taking the commands in
    turn, so every command meets every kind of fault (every case runs every command with
    ``--soak 2`` or more: a child process costs about 0.4 s)."""
    other = f"sqlite:///{tmp_path}/other.db"
    runs: list[tuple[Case, list[str], bool]] = []
    for index, case in enumerate(cases):
        if case.cache_url is not None:
            continue  # the CLI has no cache tier
        commands = CLI_COMMANDS if soak > 1 else [CLI_COMMANDS[index % len(CLI_COMMANDS)]]
        for number, command in enumerate(commands):
            argv = [part.format(url=case.url, other=other, file=f"{tmp_path}/{index}.jsonl")
                    for part in command]
            runs.append((case, argv, (index + number) % 2 == 1))

    def one(run: tuple[Case, list[str], bool]) -> str | None:
        case, argv, debug = run
        driver = case.fault.removeprefix("missing-") if case.fault.startswith("missing-") \
            else None
        if debug:  # DEBUG logging configured before the CLI's own (which then keeps it)
            code = ("import logging\nlogging.basicConfig(level=logging.DEBUG)\n"
                    f"from kvsessions.cli.main import main\nsys.exit(main({argv!r}))\n")
        else:
            code = f"sys.argv = ['kvsessions', *{argv!r}]\nimport runpy\n" \
                   "runpy.run_module('kvsessions', run_name='__main__')\n"
        child = run_child(code, hide=driver)
        output = child.stdout + child.stderr
        count = occurrences(output)
        report(case.name, f"cli {argv[0] if argv[0] != '-v' else 'ls -v'}", count)
        if count:
            lines = [line for line in output.splitlines() if MARKER.search(line)][:5]
            return f"{case.name} {argv[:1]}: password in CLI output: {lines}"
        if child.returncode == 0 and case.fails:
            return f"{case.name} {argv[:1]}: exit 0, expected a failure: {output[-500:]}"
        if "Traceback" in child.stderr:
            return f"{case.name} {argv[:1]}: a traceback, not one line: {child.stderr[-1500:]}"
        return None

    with ThreadPoolExecutor(4) as pool:
        failures = [failure for failure in pool.map(one, runs) if failure]
    assert not failures, "\n".join(failures)


def test_every_form_of_the_password_is_found() -> None:
    """The search itself: raw, percent-encoded, minimally encoded and cut at '#'."""
    for form in (PASSWORD, ENCODED, MINIMAL, ENCODED.lower(), "S3cr3t!"):
        assert occurrences(f"x{form}y") == 1


if __name__ == "__main__" and len(sys.argv) == 2:  # manual: python test_secrets.py URL
    probe_main(sys.argv[1])


# ---------------------------------------------------------------------- every printable character

#: A password is ``HEAD + characters + TAIL``: finding either end anywhere is a leak, so a
#: message that shows any part of the password up to or after the odd character is caught.
HEAD, TAIL = "Qv7Kx", "Zp4Wm"
ENDS = re.compile(f"{HEAD}|{TAIL}", re.IGNORECASE)
PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))
#: One password per printable ASCII character, and one holding them all.
PASSWORDS = [HEAD + char + TAIL for char in PRINTABLE] + [HEAD + PRINTABLE + TAIL]
#: Where a refused connection is immediate (port 1): every password is also opened there.
REFUSING = {"postgresql": "127.0.0.1:1/test?connect_timeout=2", "redis": "127.0.0.1:1/0",
            "redis+cluster": "127.0.0.1:1", "mongodb": "127.0.0.1:1/db?connect_timeout=0.2"}
EMBEDDED = {"sqlite": "localhost/tmp/kvs-secrets.db", "file": "localhost/tmp/kvs-secrets",
            "memory": "localhost"}


def password_urls(password: str) -> list[str]:
    """The URLs a user could write with ``password``: unencoded in the userinfo, percent-encoded
    there, and as a percent-encoded ``password`` option, for every scheme."""
    encoded = quote(password, safe="")
    urls = []
    for scheme, rest in {**REFUSING, **EMBEDDED}.items():
        host, _, query = rest.partition("?")
        query = f"?{query}" if query else ""
        urls += [f"{scheme}://kvs_user:{password}@{host}{query}",
                 f"{scheme}://kvs_user:{encoded}@{host}{query}",
                 f"{scheme}://{host}{query}{'&' if query else '?'}password={encoded}"]
    mongo = REFUSING["mongodb"]
    urls += [f"mongodb://{mongo}&authMechanismProperties=AWS_SESSION_TOKEN:{encoded}",
             f"mongodb://{mongo}&tlsCertificateKeyFilePassword={encoded}"]
    return urls


def shown_everywhere(url: str, *, connect: bool) -> tuple[str, list[str]]:
    """What building (and with ``connect``, opening) ``url`` every in-process way shows:
    exception texts with their chains, repr/str of stores, storages and configs, log records.
    Also the names of the errors raised, all of which must be ours."""
    from kvsessions.config import StorageConfig
    from kvsessions.kv.registry import open_store
    from kvsessions.sessions.storage import SessionStorage

    shown: list[str] = []
    errors: list[str] = []

    async def use(build: Callable[[], Any]) -> None:
        try:
            store = build()
            shown.extend((repr(store), str(store), repr(SessionStorage(store))))
            if connect:
                try:
                    await asyncio.wait_for(store.open(), 30)
                finally:
                    shown.append(repr(store))
                    await store.close()
        except Exception as exc:
            errors.append(type(exc).__name__)
            shown.append(exception_text(exc))

    async def every_way() -> None:
        await use(lambda: open_store(url))
        if url.startswith("redis"):
            await use(lambda: open_store("memory://", cache_url=url))
        scheme = url.partition("://")[0]
        backend = _backend_of(url)
        environments = [{"STORAGE_URL": url}, {"STORAGE_CACHE_URL": url},
                        {"STORAGE_BACKEND": backend, "STORAGE_CONNECTION_STRING": url}]
        for environ in environments:
            try:
                config = StorageConfig.from_env(environ)
                shown.extend((repr(config), str(config), config.redacted_url))
            except Exception as exc:
                errors.append(type(exc).__name__)
                shown.append(exception_text(exc))
        if scheme in ("postgresql", "mongodb", "redis"):
            await use(lambda: open_store(StorageConfig(url=url).store_url()))

    with everything_logged() as logs:
        asyncio.run(every_way())
    return "\n".join(shown + logs.lines), errors


def test_no_printable_character_makes_the_password_show() -> None:
    """Every printable ASCII character in a password (``#``, ``?``, ``/``, ``@``, ``%``, quotes,
    spaces...), written unencoded or encoded, in the userinfo or as an option, on every
    scheme: building the store, the cache tier, ``StorageConfig`` from ``STORAGE_URL``,
    ``STORAGE_CACHE_URL`` and ``STORAGE_CONNECTION_STRING``, and opening the store against a
    port that refuses: no part of the password shows, and every error is one of ours."""
    failures: list[str] = []
    for password in PASSWORDS:
        for url in password_urls(password):
            connect = url.split("://")[0] in ("postgresql", "redis") or password == PASSWORDS[-1]
            text, errors = shown_everywhere(url, connect=connect)
            leaks = [line for line in text.splitlines() if ENDS.search(line)]
            if leaks:
                failures.append(f"{url!r}: {leaks[:3]}")
            untyped = [name for name in errors if not _ours(name)]
            if untyped:
                failures.append(f"{url!r}: raised {untyped}, not KVSessionsError")
    assert not failures, f"{len(failures)} leaks, e.g.:\n" + "\n".join(failures[:20])


CLI_PASSWORDS = [HEAD + char + TAIL for char in "#?/@%:& \"'\\"] + [PASSWORDS[-1]]


def test_no_printable_character_makes_the_password_show_in_the_cli(tmp_path: Path) -> None:
    """The command line, in a child process: the URL as an argument and as ``STORAGE_URL``
    (``ls`` without a URL, and ``--help``), unencoded and encoded, with DEBUG logging on;
    stdout and stderr never hold any part of the password. One child runs the commands of
    one URL in turn (a child process costs about 0.4 s; the DEBUG logging the first turns on
    stays on for the others)."""
    children: list[list[tuple[list[str], dict[str, str]]]] = []
    for password in CLI_PASSWORDS:
        for written in (password, quote(password, safe="")):
            for scheme in ("postgresql", "redis"):
                url = f"{scheme}://kvs_user:{written}@{REFUSING[scheme]}"
                children.append([(["-v", "ls", url], {}), (["ls"], {"STORAGE_URL": url}),
                                 (["migrate", url, f"sqlite://{tmp_path}/o.db"], {})])
    environ_url = f"redis://kvs_user:{quote(PASSWORDS[-1], safe='')}@127.0.0.1:1/0"
    children.append([(["--help"], {"STORAGE_URL": environ_url}),
                     (["ls", "--help"], {"STORAGE_URL": environ_url})])

    def one(runs: list[tuple[list[str], dict[str, str]]]) -> str | None:
        code = ("import os\nfrom kvsessions.cli.main import main\n"
                f"for argv, environ in {runs!r}:\n"
                "    before = dict(os.environ)\n"
                "    os.environ.update(environ)\n"
                "    try:\n"
                "        main(argv)\n"
                "    except SystemExit:\n"
                "        pass\n"
                "    os.environ.clear()\n"
                "    os.environ.update(before)\n")
        child = run_child(code)
        output = child.stdout + child.stderr
        leaks = [line for line in output.splitlines() if ENDS.search(line)]
        if leaks:
            return f"{runs}: {leaks[:3]}"
        if "Traceback" in child.stderr or child.returncode != 0:
            return f"{runs}: a traceback, not one line: {child.stderr[-800:]}"
        return None

    with ThreadPoolExecutor(4) as pool:
        failures = [failure for failure in pool.map(one, children) if failure]
    assert not failures, "\n".join(failures)
