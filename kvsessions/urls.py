"""Store URLs: parsing the options they carry and printing them without secrets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from kvsessions.errors import ConfigError

__all__ = [
    "NAMESPACE_PATTERN",
    "NAMESPACE_RULE",
    "StoreURL",
    "check_namespace",
    "is_secret_option",
    "parse_store_url",
    "redact_url",
    "url_secrets",
]

#: What a namespace (table, collection or key prefix) may look like: safe to use as an SQL or
#: MongoDB identifier without quoting tricks.
NAMESPACE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
NAMESPACE_RULE = "1-63 letters, digits or '_', not starting with a digit"
#: Option names that hold a secret: passwords, pass phrases, tokens, keys' pass words, and
#: MongoDB's authMechanismProperties (which carries AWS session tokens).
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|credential|private|api_?key|access_?key|authmechanismproperties",
    re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MASK = "***"


def is_secret_option(name: str) -> bool:
    """True when an option's name says it holds a secret (its value is never shown)."""
    return _SECRET_NAME.search(name) is not None


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, rest)`` when ``url`` has a userinfo: everything between ``://``
    and the last ``@``, whatever it holds (a password may contain ``/``, ``?`` or ``#``
    unencoded). None when there is no ``@`` or the authority is empty (``sqlite:///``)."""
    scheme, separator, after = url.partition("://")
    if not separator or after.startswith("/") or "@" not in after:
        return None
    userinfo, _, rest = after.rpartition("@")
    return scheme, userinfo, rest


def _shown_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    if any(mark in user for mark in "/?#"):
        return _MASK  # not a plain user name: it may hold anything
    return f"{user}:{_MASK}" if colon else user


def _shown_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{quote(name)}={_MASK if is_secret_option(name) else quote(value)}"
                    for name, value in pairs)


def redact_url(url: str) -> str:
    """``url`` with its password (everything between ``://`` and the last ``@`` after the
    user name) and every secret option (see ``is_secret_option``) masked. Keeps
    ``sqlite:///path`` as written, so the result can be pasted back. Never raises: whatever the
    string holds, the result is safe to put into a message or a log."""
    if not isinstance(url, str):
        return type(url).__name__
    split = _split_userinfo(url)
    if split is not None:
        scheme, userinfo, rest = split
        return f"{scheme}://{_shown_userinfo(userinfo)}@{_redact_tail(rest)}"
    if "://" not in url:
        if "@" not in url:
            return _redact_tail(url)
        return f"{_MASK}@{_redact_tail(url.rpartition('@')[2])}"
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{_redact_tail(rest)}"


def _redact_tail(text: str) -> str:
    """Host, path and query (no userinfo) with secret options masked and no fragment."""
    location, question, query = text.partition("?")
    location = location.partition("#")[0]
    if not question:
        return location
    return f"{location}?{_shown_query(query.partition('#')[0])}"


def url_secrets(url: str) -> tuple[str, ...]:
    """Every form in which a URL's password could show up in a message: the userinfo's
    password by the rule of ``redact_url`` and by ``urlsplit``'s, as written, decoded and
    re-encoded, and the values of secret options. Longest first, so that scrubbing replaces a
    whole password before any part of it."""
    if not isinstance(url, str):
        return ()
    found: set[str] = set()
    split = _split_userinfo(url)
    if split is not None:
        user, colon, password = split[1].partition(":")
        found.add(password if colon else "")
        if any(mark in user for mark in "/?#"):
            found.add(split[1])
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
        query = parts.query
    except ValueError:
        query = url.partition("?")[2]
    found.update(value for name, value in parse_qsl(query, keep_blank_values=True)
                 if is_secret_option(name))
    for written in list(found):
        decoded = unquote(written)
        found.update((decoded, quote(decoded, safe=""), quote(decoded)))
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def check_namespace(namespace: str) -> str:
    """Refuse a namespace that is not a plain identifier, before any query is built from it."""
    if not isinstance(namespace, str) or not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ConfigError.not_allowed("namespace", namespace, NAMESPACE_RULE)
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

    def with_options_left(self) -> str:
        """The URL as written, with only the options still in ``options`` (those the store
        did not take, for its driver)."""
        parts = urlsplit(self.raw)
        query = urlencode(self.options, quote_via=quote)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))

    def __repr__(self) -> str:
        return f"StoreURL({self.redacted!r})"

    __str__ = __repr__


def parse_store_url(url: str) -> StoreURL:
    """Split a store URL into its parts; a malformed one gives ``ConfigError`` (redacted)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"not a store URL: {redact_url(url)!r} (expected scheme://...)")
    if _CONTROL.search(url):
        # urlsplit silently drops tabs and newlines: "?namespace=a\n" would open "a".
        raise ConfigError(f"store URL {redact_url(url)!r} holds a control character, which "
                          "is not allowed")
    # The driver's ValueError would quote the part of the password it took for a port, so
    # neither its text nor the error itself (as __context__) may travel with ours.
    parts = _split_or_none(url)
    port = _port_or_none(parts) if parts is not None else None
    if parts is None or (port is None and _has_bad_port(parts)):
        raise ConfigError(f"malformed store URL {redact_url(url)!r}: the host or port "
                          f"cannot be read{_ENCODE_HINT}")
    netloc = parts.netloc
    split = _split_userinfo(url)
    if split is not None and ":" in split[1] and netloc.rpartition("@")[0] != split[1]:
        raise ConfigError(f"malformed store URL {redact_url(url)!r}: an '@' after the host"
                          f"{_ENCODE_HINT}")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if _CONTROL.search(name) or _CONTROL.search(value):
            shown = name if not _CONTROL.search(name) else repr(name)[:40]
            raise ConfigError(f"option {shown} in {redact_url(url)!r} holds a control "
                              "character, which is not allowed")
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


def _split_or_none(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _port_or_none(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def _has_bad_port(parts: SplitResult) -> bool:
    """A port that is not a number, except with several hosts (a replica set), which has none."""
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        return "," not in parts.netloc
    return False


_ENCODE_HINT = (" (a user name or password holding '@', '/', '?', '#' or ':' must be "
                "percent-encoded, e.g. with urllib.parse.quote(password, safe=''))")
