"""Storage configuration: ``StorageConfig`` from the environment, a YAML or TOML file and
defaults (in that priority), and ``create_storage(config)``.

With nothing configured the sessions go to SQLite, ``sessions.db`` in the working folder.
``url`` (any store URL) wins over ``backend`` + ``connection_string`` / ``database_path``. A
malformed or unknown setting raises ``ConfigError`` naming the setting and what is allowed; a
password never appears in a message, ``repr`` or ``str``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kvsessions.errors import ConfigError, MissingDependencyError
from kvsessions.kv.options import Duration, Flag, Whole, check_pool_sizes
from kvsessions.kv.registry import BUILT_IN, open_store
from kvsessions.sessions.manager import MAX_EXPIRY_HOURS, SessionManager
from kvsessions.sessions.storage import SessionStorage, _path_url, _with_query
from kvsessions.urls import is_secret_option, parse_store_url, redact_url

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the installed extras
    yaml = None  # type: ignore[assignment]

__all__ = ["BACKENDS", "ENVIRONMENT", "POOL_OPTIONS", "StorageConfig", "create_manager",
           "create_storage"]

#: Backends by name, with the URL schemes a ``connection_string`` of each may use.
BACKENDS: dict[str, tuple[str, ...]] = {name: schemes for name, (_, schemes) in BUILT_IN.items()}
_ALIASES = {"postgres": "postgresql", "mongo": "mongodb", "sqlite3": "sqlite"}

#: Environment variable -> setting.
ENVIRONMENT: dict[str, str] = {
    "STORAGE_URL": "url",
    "STORAGE_BACKEND": "backend",
    "STORAGE_CONNECTION_STRING": "connection_string",
    "STORAGE_DATABASE_PATH": "database_path",
    "STORAGE_MIN_POOL_SIZE": "min_pool_size",
    "STORAGE_MAX_POOL_SIZE": "max_pool_size",
    "STORAGE_AUTO_SAVE": "auto_save",
    "STORAGE_EXPIRY_HOURS": "expiry_hours",
    "STORAGE_CACHE_URL": "cache_url",
}
#: The URL options that carry the pool sizes, by backend (None: the store has no such knob).
#: Backends not named here keep no pool: pool sizes set for them are refused, not ignored.
POOL_OPTIONS: dict[str, tuple[str | None, str]] = {
    "postgresql": ("min_pool_size", "max_pool_size"),
    "mongodb": ("minPoolSize", "maxPoolSize"),
    "redis": (None, "max_connections"),
}
_POOL_SETTINGS = ("min_pool_size", "max_pool_size")
_VARIABLE_OF = {setting: variable for variable, setting in ENVIRONMENT.items()}
#: Settings that choose the store; set in a higher source they override a lower source's url.
_STORE_CHOICE = ("backend", "connection_string", "database_path")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Setting = tuple[Any, str]  # (raw value, where it came from: shown in errors)


# ---------------------------------------------------------------------- value checks

def _backend(value: Any, origin: str) -> str:
    if not isinstance(value, str):
        raise ConfigError.not_allowed(origin, value, f"one of {', '.join(BACKENDS)}")
    name = _ALIASES.get(value.strip().lower(), value.strip().lower())
    if name not in BACKENDS:
        raise ConfigError(f"{origin}={value!r} is not a known backend: use one of "
                          f"{', '.join(BACKENDS)}")
    return name


def _text(value: Any, origin: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        shown = redact_url(value) if isinstance(value, str) else value
        raise ConfigError.not_allowed(origin, shown, "a non-empty string")
    return value.strip()


def _url(value: Any, origin: str) -> str | None:
    text = _text(value, origin)
    if text is not None:
        try:
            parse_store_url(text)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    return text


def _options(value: Any, origin: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{origin} is not allowed: use a table of name = value")
    return dict(value)


_MIN_POOL_SIZE = Whole("min_pool_size", 5, minimum=0)
_MAX_POOL_SIZE = Whole("max_pool_size", 20, minimum=1)
_AUTO_SAVE = Flag("auto_save", True)
_EXPIRY_HOURS = Duration("expiry_hours", 72, unit="hours", maximum=MAX_EXPIRY_HOURS)

_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "backend": _backend,
    "connection_string": _url,
    "database_path": _text,
    "min_pool_size": _MIN_POOL_SIZE.check,
    "max_pool_size": _MAX_POOL_SIZE.check,
    "auto_save": _AUTO_SAVE.check,
    "expiry_hours": _EXPIRY_HOURS.check,
    "options": _options,
    "url": _url,
    "cache_url": _url,
}


# ---------------------------------------------------------------------- the config

@dataclass(repr=False)
class StorageConfig:
    """Where sessions are stored and how the manager treats them (see the module docstring).

    ``database_path`` is the SQLite file (default ``sessions.db``) or, for ``file``, the folder
    (default ``sessions``). ``options`` become URL options (e.g. ``namespace``; for MongoDB
    ``database_name``). The pool sizes apply where the store has a pool (``POOL_OPTIONS``;
    Redis takes ``max_pool_size`` only); set for a store without one, they are refused."""

    backend: str = "sqlite"
    connection_string: str | None = None
    database_path: str | None = None
    min_pool_size: int = _MIN_POOL_SIZE.default
    max_pool_size: int = _MAX_POOL_SIZE.default
    auto_save: bool = _AUTO_SAVE.default
    expiry_hours: float = _EXPIRY_HOURS.default
    options: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    cache_url: str | None = None

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            setattr(self, name, check(getattr(self, name), name))
        defaults = {item.name: item.default for item in fields(self)}
        #: Pool sizes set on purpose (those of another value than the default, and those
        #: read from a source): applied to a given url too, refused where there is no pool.
        self._pool_sizes_given = frozenset(
            name for name in _POOL_SETTINGS if getattr(self, name) != defaults[name])
        if "min_pool_size" not in self._pool_sizes_given:
            # A maximum alone, below the default minimum, lowers the minimum: not an error.
            self.min_pool_size = min(self.min_pool_size, self.max_pool_size)
        check_pool_sizes(self.min_pool_size, self.max_pool_size)
        if self.url is None:
            self._check_store_choice()
        else:  # the url chooses the store: the backend shown is the one it names
            self.backend = _backend_of_url(self.url, self.backend)
        self._check_pool_sizes_apply()

    def _check_pool_sizes_apply(self) -> None:
        given = [f"{name} ({_VARIABLE_OF[name]})" for name in _POOL_SETTINGS
                 if name in self._pool_sizes_given]
        knobs = POOL_OPTIONS.get(self.backend)
        if given and knobs is None:
            raise ConfigError(f"{' and '.join(given)} set, but backend {self.backend!r} keeps "
                              "no connection pool: leave the pool sizes unset")
        if knobs is not None and knobs[0] is None and "min_pool_size" in self._pool_sizes_given:
            raise ConfigError("min_pool_size (STORAGE_MIN_POOL_SIZE) set, but Redis opens "
                              "connections as they are needed: leave it unset (max_pool_size "
                              "caps them)")

    def _pool_options(self, only_given: bool) -> dict[str, str]:
        """The pool sizes as the URL options of this backend's store."""
        knobs = POOL_OPTIONS.get(self.backend, (None, None))
        return {option: str(getattr(self, name)) for name, option in zip(_POOL_SETTINGS, knobs,
                                                                        strict=True)
                if option is not None and (name in self._pool_sizes_given or not only_given)}

    def _check_store_choice(self) -> None:
        if self.connection_string is None:
            if self.backend in ("postgresql", "mongodb"):
                raise ConfigError(f"backend {self.backend!r} needs connection_string "
                                  f"(STORAGE_CONNECTION_STRING), e.g. "
                                  f"{BACKENDS[self.backend][0]}://user@host/db")
            return
        if self.backend in ("sqlite", "file", "memory"):
            raise ConfigError(f"connection_string is for postgresql, mongodb or redis, not "
                              f"backend {self.backend!r}: set backend (STORAGE_BACKEND), or "
                              "database_path for a SQLite file")
        scheme = parse_store_url(self.connection_string).scheme
        if scheme not in BACKENDS[self.backend]:
            raise ConfigError(f"connection_string {redact_url(self.connection_string)!r} is not "
                              f"a {self.backend} URL: it must start with "
                              f"{' or '.join(s + '://' for s in BACKENDS[self.backend])}")

    # ------------------------------------------------------------------ shown safely

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("url", "connection_string", "cache_url") and value is not None:
                value = redact_url(value)
            elif item.name == "options":
                value = {k: "***" if is_secret_option(k) else v
                         for k, v in value.items()}
            shown.append(f"{item.name}={value!r}")
        return f"StorageConfig({', '.join(shown)})"

    __str__ = __repr__

    # ------------------------------------------------------------------ the store

    def store_url(self) -> str:
        """The URL of the store this configuration names."""
        if self.url is not None:  # pool sizes set on purpose join it, unless it has its own
            written = parse_store_url(self.url).options
            pools = {k: v for k, v in self._pool_options(only_given=True).items()
                     if k not in written}
            return _with_query(self.url, **pools) if pools else self.url
        # PostgreSQL has always had the seed's 5 and 20; the others keep their drivers' defaults
        # unless pool sizes are set.
        options = {**self._pool_options(only_given=self.backend != "postgresql"),
                   **{k: (str(v).lower() if isinstance(v, bool) else str(v))
                      for k, v in self.options.items() if v is not None}}
        if self.backend == "sqlite":
            path = self.database_path or "sessions.db"
            base = "sqlite:///:memory:" if path == ":memory:" else _path_url("sqlite", path)
        elif self.backend == "file":
            base = _path_url("file", self.database_path or "sessions")
        elif self.backend == "memory":
            base = "memory://"
        elif self.backend == "redis":
            base = self.connection_string or "redis://127.0.0.1:6379/0"
        elif self.backend == "postgresql":
            assert self.connection_string is not None
            base = self.connection_string
        else:  # mongodb
            assert self.connection_string is not None
            base = self.connection_string
            if "database_name" in options:
                options["database"] = options.pop("database_name")
        return _with_query(base, **options)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.store_url())

    # ------------------------------------------------------------------ sources

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageConfig:
        """Settings from ``STORAGE_*`` variables (see ``ENVIRONMENT``), defaults for the rest."""
        return cls._build(_environment_settings(os.environ if environ is None else environ))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str],
                  environ: Mapping[str, str] | None = None) -> StorageConfig:
        """Settings from the ``storage`` section of a YAML (``.yaml``/``.yml``) or TOML
        (``.toml``) file; ``${NAME}`` in a value is replaced by that environment variable."""
        return cls._build(_file_settings(Path(path), os.environ if environ is None else environ))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None,
             environ: Mapping[str, str] | None = None) -> StorageConfig:
        """Environment over file (when ``path`` is given) over defaults. A store chosen in the
        environment (backend, connection string or database path) replaces the file's url."""
        env = os.environ if environ is None else environ
        settings = _file_settings(Path(path), env) if path is not None else {}
        from_env = _environment_settings(env)
        if "url" not in from_env and any(name in from_env for name in _STORE_CHOICE):
            settings.pop("url", None)
        settings.update(from_env)
        return cls._build(settings)

    @classmethod
    def _build(cls, settings: dict[str, Setting]) -> StorageConfig:
        values = {name: _CHECKS[name](raw, origin) for name, (raw, origin) in settings.items()}
        config = cls(**values)
        given = {name for name in settings if name in _POOL_SETTINGS}
        if given - config._pool_sizes_given:  # set to the default value, but set on purpose
            config._pool_sizes_given |= given
            config._check_pool_sizes_apply()
        return config


def _backend_of_url(url: str, default: str) -> str:
    """The backend whose schemes include ``url``'s (``default`` for a scheme of none)."""
    scheme = parse_store_url(url).scheme
    return next((name for name, schemes in BACKENDS.items() if scheme in schemes), default)


def _environment_settings(environ: Mapping[str, str]) -> dict[str, Setting]:
    return {setting: (environ[name], name) for name, setting in ENVIRONMENT.items()
            if environ.get(name, "").strip()}


def _file_settings(path: Path, environ: Mapping[str, str]) -> dict[str, Setting]:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(f"configuration file {str(path)!r}: use a .yaml, .yml or .toml file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {str(path)!r} cannot be read: "
                          f"{exc.strerror}") from None
    if suffix == ".toml":
        try:
            document: Any = tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {exc}") \
                from None
    else:
        if yaml is None:
            raise MissingDependencyError("pyyaml", "yaml",
                                         purpose="reading a YAML configuration file")
        try:
            document = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {str(path)!r} is not valid YAML: "
                              f"{str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict) or not isinstance(document.get("storage"), dict):
        found = ", ".join(map(str, document)) if isinstance(document, dict) else "nothing"
        raise ConfigError(f"configuration file {str(path)!r} has no storage section "
                          f"(found: {found or 'nothing'}); write the settings under "
                          f"{'[storage]' if suffix == '.toml' else 'storage:'}")
    section: dict[str, Any] = document["storage"]
    unknown = sorted(str(name) for name in section if name not in _CHECKS)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in the storage section of "
                          f"{str(path)!r}; allowed: {', '.join(_CHECKS)}")
    return {name: (_expand(value, f"storage.{name} in {path.name}", environ),
                   f"storage.{name} in {path.name}")
            for name, value in section.items()}


def _expand(value: Any, origin: str, environ: Mapping[str, str]) -> Any:
    """``${NAME}`` in strings (also inside ``options``) replaced from the environment."""
    if isinstance(value, dict):
        return {k: _expand(v, origin, environ) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{origin} uses ${{{name}}}, but the environment variable "
                              f"{name} is not set")
        return environ[name]

    return _VARIABLE.sub(variable, value)


# ---------------------------------------------------------------------- building

def create_storage(config: StorageConfig | None = None) -> SessionStorage:
    """A ``SessionStorage`` on the configured store (not yet connected: ``await
    storage.initialize()``), behind the cache tier when ``cache_url`` is set."""
    config = StorageConfig.load() if config is None else config
    if config.cache_url is not None:
        return SessionStorage(open_store(config.store_url(), cache_url=config.cache_url))
    return SessionStorage(open_store(config.store_url()))


def create_manager(config: StorageConfig | None = None,
                   storage: SessionStorage | None = None) -> SessionManager:
    """A ``SessionManager`` with the configured auto-save and expiry."""
    config = StorageConfig.load() if config is None else config
    return SessionManager(storage or create_storage(config), auto_save_enabled=config.auto_save,
                          expiry_hours=config.expiry_hours)
