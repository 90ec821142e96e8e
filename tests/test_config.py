"""StorageConfig: environment over file over defaults, YAML and TOML, errors, create_storage."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from kvsessions import config as config_module
from kvsessions.config import StorageConfig, create_manager, create_storage
from kvsessions.documents.models import ChatSession
from kvsessions.errors import ConfigError, MissingDependencyError
from kvsessions.sessions.storage import SessionStorage
from kvsessions.wrappers.cache import CachedStore
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.backends.redis import REDIS_URL


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_sqlite_in_the_working_folder(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = StorageConfig.load(environ={})
    assert (config.backend, config.auto_save, config.expiry_hours) == ("sqlite", True, 72)
    assert (config.min_pool_size, config.max_pool_size) == (5, 20)
    assert config.store_url() == f"sqlite:///{tmp_path}/sessions.db"


def test_environment(tmp_path: Path) -> None:
    config = StorageConfig.from_env({
        "STORAGE_BACKEND": "postgresql",
        "STORAGE_CONNECTION_STRING": "postgresql://app:s3cret@db:5432/chat",
        "STORAGE_MIN_POOL_SIZE": "2",
        "STORAGE_MAX_POOL_SIZE": "8",
        "STORAGE_AUTO_SAVE": "false",
        "STORAGE_EXPIRY_HOURS": "1.5",
        "STORAGE_CACHE_URL": "redis://cache:6379/1",
        "UNRELATED": "x",
    })
    assert config.backend == "postgresql"
    assert (config.min_pool_size, config.max_pool_size) == (2, 8)
    assert config.auto_save is False and config.expiry_hours == 1.5
    assert config.cache_url == "redis://cache:6379/1"
    assert config.store_url() == \
        "postgresql://app:s3cret@db:5432/chat?min_pool_size=2&max_pool_size=8"
    sqlite = StorageConfig.from_env({"STORAGE_DATABASE_PATH": str(tmp_path / "x.db")})
    assert sqlite.store_url() == f"sqlite:///{tmp_path}/x.db"


def test_url_wins_over_backend_and_connection_string() -> None:
    config = StorageConfig.from_env({"STORAGE_URL": "redis://127.0.0.1:6379/3",
                                     "STORAGE_BACKEND": "postgresql"})
    assert config.store_url() == "redis://127.0.0.1:6379/3"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"STORAGE_BACKEND": "oracle"}, "STORAGE_BACKEND='oracle' is not a known backend: "
                                        "use one of sqlite, postgresql, mongodb, redis"),
        ({"STORAGE_MIN_POOL_SIZE": "many"}, "STORAGE_MIN_POOL_SIZE='many' is not allowed: "
                                            "use a whole number >= 0"),
        ({"STORAGE_MAX_POOL_SIZE": "0"}, "STORAGE_MAX_POOL_SIZE='0'"),
        ({"STORAGE_MIN_POOL_SIZE": "30"}, "min_pool_size=30 is not allowed: use a whole "
                                              "number <= max_pool_size (20)"),
        ({"STORAGE_AUTO_SAVE": "maybe"}, "STORAGE_AUTO_SAVE='maybe' is not allowed: use true"),
        ({"STORAGE_EXPIRY_HOURS": "-1"}, "STORAGE_EXPIRY_HOURS='-1' is not allowed"),
        ({"STORAGE_EXPIRY_HOURS": "soon"}, "number of hours > 0"),
        ({"STORAGE_URL": "not a url"}, "STORAGE_URL: not a store URL"),
        ({"STORAGE_BACKEND": "postgresql"}, "needs connection_string"),
        ({"STORAGE_CONNECTION_STRING": "postgresql://h/db"}, "not backend 'sqlite'"),
        ({"STORAGE_BACKEND": "mongodb", "STORAGE_CONNECTION_STRING": "postgresql://h/db"},
         "is not a mongodb URL"),
    ],
)
def test_bad_settings_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        StorageConfig.from_env(environ)
    assert message in str(raised.value)


def test_programmatic_config_of_the_seed() -> None:
    config = StorageConfig(backend="postgresql", connection_string="postgresql://localhost/gemini",
                           min_pool_size=5, max_pool_size=20, auto_save=True, expiry_hours=72)
    assert config.store_url() == \
        "postgresql://localhost/gemini?min_pool_size=5&max_pool_size=20"
    with pytest.raises(ConfigError, match="expiry_hours"):
        StorageConfig(expiry_hours=0)
    with pytest.raises(ConfigError, match="backend"):
        StorageConfig(backend="cassandra")


def test_yaml_shapes_of_the_seed(tmp_path: Path) -> None:
    sqlite = StorageConfig.from_file(write(tmp_path / "a.yaml", (
        'storage:\n  backend: "sqlite"\n  database_path: "./gemini_sessions.db"\n'
        "  auto_save: true\n  expiry_hours: 72\n")), environ={})
    assert sqlite.database_path == "./gemini_sessions.db" and sqlite.expiry_hours == 72
    mongo = StorageConfig.from_file(write(tmp_path / "b.yml", (
        'storage:\n  backend: "mongodb"\n  connection_string: "mongodb://localhost:27017"\n'
        '  options:\n    database_name: "gemini_mcp"\n')), environ={})
    assert mongo.store_url() == "mongodb://localhost:27017?database=gemini_mcp"
    postgres = StorageConfig.from_file(write(tmp_path / "c.yaml", (
        'storage:\n  backend: "postgresql"\n'
        '  connection_string: "postgresql://gemini:${DB_PASSWORD}@localhost:5432/gemini_mcp"\n'
        "  min_pool_size: 10\n  max_pool_size: 50\n")), environ={"DB_PASSWORD": "hunter2"})
    assert postgres.store_url() == ("postgresql://gemini:hunter2@localhost:5432/gemini_mcp"
                                    "?min_pool_size=10&max_pool_size=50")
    assert "hunter2" not in repr(postgres) and "hunter2" not in str(postgres)
    with pytest.raises(ConfigError, match=r"\$\{DB_PASSWORD\}.*not set"):
        StorageConfig.from_file(tmp_path / "c.yaml", environ={})


def test_toml_shape_of_the_seed(tmp_path: Path) -> None:
    config = StorageConfig.from_file(write(tmp_path / "s.toml", (
        '[storage]\nbackend = "sqlite"\ndatabase_path = "./gemini_sessions.db"\n'
        "auto_save = false\nexpiry_hours = 24\n\n[storage.options]\nnamespace = \"chat\"\n")),
        environ={})
    assert (config.auto_save, config.expiry_hours) == (False, 24)
    assert config.store_url().endswith("/gemini_sessions.db?namespace=chat")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "storage:\n  backend: sqlite\n  expiry: 3\n",
         "unknown setting(s) expiry in the storage section"),
        ("b.yaml", "store:\n  backend: sqlite\n", "has no storage section (found: store)"),
        ("c.toml", "[storage]\nexpiry_hours = 'x'\n",
         "storage.expiry_hours in c.toml='x' is not allowed"),
        ("d.toml", "[storage\n", "is not valid TOML"),
        ("e.yaml", "storage: [unclosed\n", "is not valid YAML"),
        ("f.ini", "[storage]\n", "use a .yaml, .yml or .toml file"),
        ("g.yaml", "storage:\n  options: 3\n", "storage.options in g.yaml is not allowed"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        StorageConfig.from_file(write(tmp_path / name, text), environ={})
    assert message in str(raised.value)


def test_missing_file_and_missing_yaml_package(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        StorageConfig.from_file(tmp_path / "nothing.yaml")
    monkeypatch.setattr(config_module, "yaml", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvsessions\[yaml\]'"):
        StorageConfig.from_file(write(tmp_path / "x.yaml", "storage: {}\n"))
    # TOML needs nothing beyond the standard library
    StorageConfig.from_file(write(tmp_path / "x.toml", "[storage]\n"))


def test_load_environment_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", "storage:\n  url: redis://127.0.0.1:6379/2\n"
                                      "  expiry_hours: 5\n  auto_save: false\n")
    config = StorageConfig.load(path, environ={"STORAGE_EXPIRY_HOURS": "9"})
    assert (config.url, config.expiry_hours, config.auto_save) == \
        ("redis://127.0.0.1:6379/2", 9, False)
    assert (config.min_pool_size, config.max_pool_size) == (5, 20)
    chosen = StorageConfig.load(path, environ={"STORAGE_DATABASE_PATH": str(tmp_path / "e.db")})
    assert chosen.url is None and chosen.store_url() == f"sqlite:///{tmp_path}/e.db"


def test_repr_never_shows_a_password() -> None:
    config = StorageConfig(backend="postgresql",
                           connection_string="postgresql://app:pa55word@db/chat",
                           url="postgresql://app:pa55word@db/chat",
                           cache_url="redis://:pa55word@cache:6379/0",
                           options={"password": "pa55word", "namespace": "chat"})
    for text in (repr(config), str(config), config.redacted_url):
        assert "pa55word" not in text
    assert "namespace" in repr(config) and "***" in repr(config)


async def test_create_storage_works_on_sqlite(tmp_path: Path) -> None:
    config = StorageConfig(database_path=str(tmp_path / "made.db"), options={"namespace": "cfg"})
    storage = create_storage(config)
    assert isinstance(storage, SessionStorage)
    async with storage:
        session = ChatSession.create("m")
        session.add_message("user", "hi")
        await storage.save_session(session)
        assert await storage.load_session(session.session_id) == session
    assert (tmp_path / "made.db").exists()
    manager = create_manager(StorageConfig(backend="memory", auto_save=False, expiry_hours=2))
    assert (manager.auto_save_enabled, manager.expiry_hours) == (False, 2)


async def test_create_storage_on_postgresql_with_a_cache() -> None:
    namespace = "t_cfg_" + uuid.uuid4().hex[:12]
    config = StorageConfig(backend="postgresql", connection_string=POSTGRES_URL,
                           min_pool_size=1, max_pool_size=2, options={"namespace": namespace},
                           cache_url=REDIS_URL)
    storage = create_storage(config)
    assert isinstance(storage.store, CachedStore)
    try:
        async with storage:
            session = ChatSession.create("m")
            session.add_message("user", "cached")
            await storage.save_session(session)
            loaded: Any = await storage.load_session(session.session_id)
            assert loaded.messages[0].content == "cached"
    finally:
        await drop_tables(POSTGRES_URL, {namespace})
