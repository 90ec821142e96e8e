"""Options every store shares are checked once, the same way on every scheme, whether they come
from the URL or from a keyword argument, with one wording per error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from kvsessions.errors import ConfigError
from kvsessions.kv.registry import known_schemes, open_store
from tests.backends.postgresql import POSTGRES_URL

#: A URL of each registered scheme (nothing is opened unless a test says so).
BASES = {
    "memory": "memory://",
    "file": "file://{tmp}/files",
    "sqlite": "sqlite://{tmp}/store.db",
    "postgresql": POSTGRES_URL,
    "postgres": POSTGRES_URL.replace("postgresql://", "postgres://", 1),
    "mongodb": "mongodb://127.0.0.1:27017/db",
    "mongodb+srv": "mongodb+srv://cluster.example.invalid/db",
    "redis": "redis://127.0.0.1:6379/0",
    "rediss": "rediss://127.0.0.1:6379/0",
    "redis+cluster": "redis+cluster://127.0.0.1:7000",
    "rediss+cluster": "rediss+cluster://127.0.0.1:7000",
}
#: The timeouts (seconds) each scheme takes.
TIMEOUTS = {
    "postgresql": ("connect_timeout", "command_timeout", "acquire_timeout"),
    "mongodb": ("connect_timeout",),
    "redis": ("socket_timeout", "connect_timeout", "acquire_timeout"),
}
SCHEME_TIMEOUTS = [(scheme, name) for scheme in BASES
                   for family, names in TIMEOUTS.items() if scheme.startswith(family)
                   for name in names]


def url_of(scheme: str, tmp_path: Path, query: str = "") -> str:
    base = BASES[scheme].format(tmp=tmp_path)
    return f"{base}{'&' if '?' in base else '?'}{query}" if query else base


def refused(url: str, **options: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        open_store(url, **options)
    return str(raised.value)


def test_every_scheme_is_covered() -> None:
    assert sorted(BASES) == known_schemes()


@pytest.mark.parametrize("scheme", sorted(BASES))
def test_bad_durability(scheme: str, tmp_path: Path) -> None:
    expected = "durability='fast' is not allowed: use one of normal, strict"
    assert refused(url_of(scheme, tmp_path, "durability=fast")) == expected
    assert refused(url_of(scheme, tmp_path), durability="fast") == expected


@pytest.mark.parametrize("scheme", sorted(BASES))
def test_zero_batch_size(scheme: str, tmp_path: Path) -> None:
    assert refused(url_of(scheme, tmp_path, "batch_size=0")) == (
        "batch_size='0' is not allowed: use a whole number >= 1")
    assert refused(url_of(scheme, tmp_path), batch_size=0) == (
        "batch_size=0 is not allowed: use a whole number >= 1")
    assert refused(url_of(scheme, tmp_path), batch_size=2.5) == (
        "batch_size=2.5 is not allowed: use a whole number >= 1")


@pytest.mark.parametrize("scheme", sorted(BASES))
def test_bad_namespace(scheme: str, tmp_path: Path) -> None:
    rule = "is not allowed: use 1-63 letters, digits or '_', not starting with a digit"
    assert refused(url_of(scheme, tmp_path, "namespace=a-b")) == f"namespace='a-b' {rule}"
    assert refused(url_of(scheme, tmp_path), namespace="a-b") == f"namespace='a-b' {rule}"
    assert refused(url_of(scheme, tmp_path, "namespace=")) == f"namespace='' {rule}"


@pytest.mark.parametrize(("scheme", "name"), SCHEME_TIMEOUTS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, -1, 0, "soon", True])
def test_bad_timeouts(scheme: str, name: str, value: Any, tmp_path: Path) -> None:
    """``inf`` was refused by PostgreSQL and taken by Redis: now every store refuses it (and
    NaN, negative, zero), from the URL and from a keyword alike."""
    rule = "is not allowed: use a number of seconds > 0"
    if not isinstance(value, bool):
        written = str(value)
        assert refused(url_of(scheme, tmp_path, f"{name}={written}")) == (
            f"{name}={written!r} {rule}")
    assert refused(url_of(scheme, tmp_path), **{name: value}) == f"{name}={value!r} {rule}"


@pytest.mark.parametrize("scheme", ["sqlite"])
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1.5"])
def test_bad_busy_timeout(scheme: str, value: str, tmp_path: Path) -> None:
    assert refused(url_of(scheme, tmp_path, f"busy_timeout={value}")) == (
        f"busy_timeout={value!r} is not allowed: use a whole number of milliseconds >= 0")


@pytest.mark.parametrize("scheme", sorted(BASES))
async def test_unknown_option(scheme: str, tmp_path: Path) -> None:
    """Refused when the store is built; PostgreSQL hands options it does not know to the
    server as settings (``?application_name=...``), so it is refused when the server says so."""
    url = url_of(scheme, tmp_path, "kvs_no_such_option=1")
    with pytest.raises(ConfigError) as raised:
        async with open_store(url):
            pass
    message = str(raised.value)
    assert message.startswith("unknown option(s) kvs_no_such_option in "), message
    assert message.endswith("kvs_no_such_option=1"), message


async def test_postgresql_still_passes_server_settings() -> None:
    async with open_store(f"{POSTGRES_URL}?application_name=kvs_options_test&max_pool_size=2",
                          namespace="t_options_settings") as store:
        assert await store.get("k") is None


def test_memory_refuses_strict_durability() -> None:
    assert "memory:// keeps nothing" in refused("memory://?durability=strict")


def test_file_strict_needs_fsync(tmp_path: Path) -> None:
    assert refused(f"file://{tmp_path}?durability=strict&fsync=false") == (
        "fsync=False is not allowed: use true with durability=strict (every write fsynced "
        "before it returns), or durability=normal")


def test_pool_sizes(tmp_path: Path) -> None:
    assert refused(POSTGRES_URL, min_pool_size=5, max_pool_size=2) == (
        "min_pool_size=5 is not allowed: use a whole number <= max_pool_size (2)")
    assert refused(f"{POSTGRES_URL}?max_pool_size=0") == (
        "max_pool_size='0' is not allowed: use a whole number >= 1")


def test_good_options_are_taken(tmp_path: Path) -> None:
    store: Any = open_store(f"{POSTGRES_URL}?connect_timeout=2.5&batch_size=7",
                            acquire_timeout=3)
    assert (store.connect_timeout, store.acquire_timeout, store.scan_batch_size) == (2.5, 3, 7)
    store = open_store("redis://127.0.0.1:6379/0?socket_timeout=1e1", connect_timeout=2)
    assert (store._socket_timeout, store._connect_timeout) == (10.0, 2)
    store = open_store(f"sqlite://{tmp_path}/s.db?busy_timeout=0&batch_size=3")
    assert (store.busy_timeout, store.scan_batch_size) == (0, 3)
    store = open_store("mongodb://127.0.0.1:1/db?batch_size=9&appName=x", connect_timeout=1)
    assert (store.scan_batch_size, store._connect_timeout) == (9, 1)
    assert store._url == "mongodb://127.0.0.1:1/db?appName=x"


def test_a_keyword_wins_over_the_url_and_both_are_checked(tmp_path: Path) -> None:
    store: Any = open_store(f"{POSTGRES_URL}?connect_timeout=2", connect_timeout=3)
    assert store.connect_timeout == 3
    store = open_store(f"sqlite://{tmp_path}/s.db?namespace=from_url", namespace="from_kw")
    assert store.namespace == "from_kw"
    # A bad URL value is refused even when a keyword would override it.
    assert refused(f"{POSTGRES_URL}?connect_timeout=inf", connect_timeout=3) == (
        "connect_timeout='inf' is not allowed: use a number of seconds > 0")


def test_a_duration_may_have_a_maximum() -> None:
    from kvsessions.kv.options import Duration

    hours = Duration("expiry_hours", 72, unit="hours", maximum=1_000_000)
    assert hours.check("1e6") == 1e6
    for value in ("1e8", 1_000_001, math.inf):
        with pytest.raises(ConfigError) as raised:
            hours.check(value, "STORAGE_EXPIRY_HOURS")
        assert str(raised.value) == (f"STORAGE_EXPIRY_HOURS={value!r} is not allowed: use a "
                                     "number of hours > 0 and at most 1,000,000")
