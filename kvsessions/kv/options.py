"""Store options, declared once and checked in one place, with one wording for each error.

Each adapter declares the options it takes (``SHARED`` ones, which every store has, and its
own) as a tuple of ``Option`` in its ``declared_options``; ``read_options`` reads them from
keyword arguments and from a URL's query (a keyword wins over the URL, the URL over the
default), applying the same check to both, so ``?connect_timeout=inf`` and
``connect_timeout=math.inf`` give the same ``ConfigError``. The wordings::

    NAME=VALUE is not allowed: use REQUIREMENT        a value that fails its check
    unknown option(s) NAMES in URL                    a URL option no one takes
    option NAME in URL holds a control character...   (from ``parse_store_url``)
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from kvsessions.errors import ConfigError
from kvsessions.kv.base import DEFAULT_NAMESPACE
from kvsessions.urls import NAMESPACE_RULE, StoreURL, check_namespace, redact_url

__all__ = [
    "BATCH_SIZE",
    "DURABILITY",
    "NAMESPACE",
    "PARTITIONS",
    "Choice",
    "Duration",
    "Flag",
    "Namespace",
    "Option",
    "Text",
    "Whole",
    "batch_size_option",
    "check_pool_sizes",
    "not_allowed",
    "read_options",
    "unknown_options",
]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_WHOLE = re.compile(r"\s*[+-]?\d+\s*")


not_allowed = ConfigError.not_allowed


def unknown_options(names: Sequence[str], url: StoreURL | str) -> ConfigError:
    """The one error for URL options that neither the store nor its driver (nor, for
    PostgreSQL, the server) takes. ``url`` is shown redacted."""
    shown = url.redacted if isinstance(url, StoreURL) else redact_url(url)
    return ConfigError(f"unknown option(s) {', '.join(sorted(names))} in {shown}")


@dataclass(frozen=True)
class Option(ABC):
    """One option: its name, its default, and the check its value must pass."""

    name: str
    default: Any
    #: What a value must be, for kinds whose rule is fixed ("true or false").
    rule: ClassVar[str] = ""

    @property
    def requirement(self) -> str:
        """What a value must be, as the error message says it ("a number of seconds > 0")."""
        return self.rule

    @abstractmethod
    def _convert(self, value: object) -> Any:
        """The checked value, or None when ``value`` fails the check (text from a URL or a
        typed keyword argument alike)."""

    def check(self, value: object, origin: str | None = None) -> Any:
        converted = self._convert(value)
        if converted is None:
            raise not_allowed(origin or self.name, value, self.requirement)
        return converted


@dataclass(frozen=True)
class Duration(Option):
    """A finite number > 0 (of seconds, unless ``unit`` says otherwise)."""

    unit: str = "seconds"
    #: The largest value allowed, where a larger one would overflow time arithmetic.
    maximum: float | None = None

    @property
    def requirement(self) -> str:
        most = "" if self.maximum is None else f" and at most {self.maximum:,}"
        return f"a number of {self.unit} > 0{most}"

    def _convert(self, value: object) -> float | None:
        number = math.nan
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return None
        too_large = self.maximum is not None and number > self.maximum
        return number if math.isfinite(number) and number > 0 and not too_large else None


@dataclass(frozen=True)
class Whole(Option):
    """A whole number >= ``minimum`` (``unit`` names what it counts, when that helps)."""

    minimum: int = 0
    unit: str = ""

    @property
    def requirement(self) -> str:
        unit = f" of {self.unit}" if self.unit else ""
        return f"a whole number{unit} >= {self.minimum}"

    def _convert(self, value: object) -> int | None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _WHOLE.fullmatch(value):
            number = int(value)
        return number if number is not None and number >= self.minimum else None


@dataclass(frozen=True)
class Flag(Option):
    rule = "true or false"

    def _convert(self, value: object) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        return None


@dataclass(frozen=True)
class Choice(Option):
    choices: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"one of {', '.join(self.choices)}"

    def _convert(self, value: object) -> str | None:
        return value if isinstance(value, str) and value in self.choices else None


@dataclass(frozen=True)
class Text(Option):
    """A non-empty string (a path, a database name): the store or its driver checks more."""

    rule = "a non-empty string"

    def _convert(self, value: object) -> str | None:
        return value if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True)
class Namespace(Option):
    """The table, collection, folder or key prefix a store keeps its keys in."""

    rule = NAMESPACE_RULE

    def _convert(self, value: object) -> str | None:
        try:
            return check_namespace(value)  # type: ignore[arg-type]
        except ConfigError:
            return None


# ---------------------------------------------------------------------- shared by every store

NAMESPACE = Namespace("namespace", DEFAULT_NAMESPACE)
DURABILITY = Choice("durability", "normal", choices=("normal", "strict"))


def batch_size_option(default: int) -> Whole:
    """How many keys one scan page, chunk or pipeline takes (each store has its own default)."""
    return Whole("batch_size", default, minimum=1)


BATCH_SIZE = batch_size_option(1000)

#: Hash partitions of a table a store creates (``kvsessions.kv.partitions``); unset: one plain
#: table. Read by the stores that can partition a table (PostgreSQL).
PARTITIONS = Whole("partitions", None, minimum=1, unit="hash partitions")

#: Options every store takes, besides its own.
SHARED: tuple[Option, ...] = (NAMESPACE, DURABILITY)


def read_options(
    declared: Sequence[Option],
    given: Mapping[str, object],
    url: StoreURL | None = None,
    *,
    keep_unknown: bool = False,
) -> dict[str, Any]:
    """Every declared option's value: the keyword argument in ``given`` (None counts as not
    given), else the URL's, else the default; each checked the same way wherever it came
    from. The URL's options are taken out of ``url.options``; what is left is refused unless
    ``keep_unknown`` (the store hands it to its driver, which knows its own)."""
    values: dict[str, Any] = {}
    for option in declared:
        from_url = url.options.pop(option.name, None) if url is not None else None
        if from_url is not None:
            values[option.name] = option.check(from_url)
        value = given.get(option.name)
        if value is not None:
            values[option.name] = option.check(value)
        elif option.name not in values:
            values[option.name] = option.default
    if url is not None and url.options and not keep_unknown:
        raise unknown_options(list(url.options), url)
    return values


def check_pool_sizes(min_pool_size: int, max_pool_size: int) -> None:
    if min_pool_size > max_pool_size:
        raise not_allowed("min_pool_size", min_pool_size,
                          f"a whole number <= max_pool_size ({max_pool_size})")
