"""Store URLs: parsing the options they carry and printing them without secrets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from kvsessions.errors import ConfigError

__all__ = ["NAMESPACE_PATTERN", "StoreURL", "check_namespace", "parse_store_url", "redact_url",
           "url_secrets"]

#: What a namespace (table, collection or key prefix) may look like: safe to use as an SQL or
#: MongoDB identifier without quoting tricks.
NAMESPACE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SECRET_PARAMS = frozenset({"password", "pass", "pwd", "secret", "token", "sslpassword"})
_MASK = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with any password (userinfo or a secret query parameter) masked.

    Never raises: a string that is not a URL at all comes back with everything that could be a
    password masked, so it is always safe to put into a message or a log.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{_MASK}@{hostinfo}" if ":" in userinfo else f"{user}@{hostinfo}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = "&".join(
                f"{quote(k)}={_MASK if k.lower() in _SECRET_PARAMS else quote(v)}"
                for k, v in pairs
            )
        shown = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
        if not netloc and "://" in url and "://" not in shown:
            # urlunsplit drops an empty authority: keep sqlite:///path pasteable.
            shown = shown.replace(":", "://", 1)
        return shown
    except ValueError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", rf"\1{_MASK}@", url.split("?", 1)[0])


def url_secrets(url: str) -> tuple[str, ...]:
    """Every form in which a URL's password could show up in a message: as written in the URL
    (percent-encoded or not), decoded, re-encoded, and secret query parameters. Longest first,
    so that scrubbing replaces a whole password before any part of it."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
        found.update(value for name, value in parse_qsl(parts.query, keep_blank_values=True)
                     if name.lower() in _SECRET_PARAMS)
    except ValueError:
        return ()
    for written in list(found):
        decoded = unquote(written)
        found.update((decoded, quote(decoded, safe="")))
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def check_namespace(namespace: str) -> str:
    """Refuse a namespace that is not a plain identifier, before any query is built from it."""
    if not isinstance(namespace, str) or not NAMESPACE_PATTERN.fullmatch(namespace):
        shown = repr(namespace)[:80]
        raise ConfigError(
            f"namespace {shown} is not allowed: use 1-63 letters, digits or '_', "
            "not starting with a digit"
        )
    return namespace


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL. ``options`` are the query parameters (the last of repeated ones)."""

    raw: str = field(repr=False)
    scheme: str
    username: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    path: str
    options: dict[str, str]

    @property
    def redacted(self) -> str:
        return redact_url(self.raw)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every form of the URL's password (see ``url_secrets``)."""
        return url_secrets(self.raw)

    def __repr__(self) -> str:
        return f"StoreURL({self.redacted!r})"

    __str__ = __repr__

    def pop_option(self, name: str, default: str | None = None) -> str | None:
        """Take an option out so that leftovers can be reported as unknown."""
        return self.options.pop(name, default)

    def namespace_option(self, default: str) -> str:
        """The ``namespace`` option, checked: an empty or unsafe one is refused, not defaulted."""
        return check_namespace(self.options.pop("namespace", default))

    def int_option(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.options.pop(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"option {name}={raw!r} in {self.redacted} must be a whole number"
            ) from None
        if value < minimum:
            raise ConfigError(f"option {name}={value} in {self.redacted} must be >= {minimum}")
        return value

    def float_option(self, name: str, default: float | None) -> float | None:
        raw = self.options.pop(name, None)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"option {name}={raw!r} in {self.redacted} must be a number"
            ) from None
        if not value > 0:
            raise ConfigError(f"option {name}={raw!r} in {self.redacted} must be > 0")
        return value

    def bool_option(self, name: str, default: bool) -> bool:
        raw = self.options.pop(name, None)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"option {name}={raw!r} in {self.redacted} must be true or false")

    def check_no_options_left(self) -> None:
        if self.options:
            names = ", ".join(sorted(self.options))
            raise ConfigError(f"unknown option(s) {names} in {self.redacted}")


def parse_store_url(url: str) -> StoreURL:
    """Split a store URL into its parts; a malformed one gives ``ConfigError`` (redacted)."""
    if not isinstance(url, str) or "://" not in url:
        shown = redact_url(url) if isinstance(url, str) else type(url).__name__
        raise ConfigError(f"not a store URL: {shown!r} (expected scheme://...)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"malformed store URL {redact_url(url)!r}: {exc}") from None
    try:
        port = parts.port
    except ValueError as exc:
        if "," not in parts.netloc:  # several hosts (a replica set) have no single port
            raise ConfigError(f"malformed store URL {redact_url(url)!r}: {exc}") from None
        port = None
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        options[name] = value
    password = parts.password
    if password is None and "password" in options:
        password = options["password"]
    return StoreURL(
        raw=url,
        scheme=parts.scheme.lower(),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(password) if password else None,
        host=parts.hostname,
        port=port,
        path=unquote(parts.path),
        options=options,
    )
