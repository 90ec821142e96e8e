"""Hostile namespaces are refused before any query is built; nothing unsafe is in the package."""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsessions.errors import ConfigError
from kvsessions.kv.registry import open_store
from kvsessions.testing import StoreFactory
from kvsessions.urls import NAMESPACE_PATTERN, check_namespace

PACKAGE = Path(__file__).resolve().parents[2] / "kvsessions"

HOSTILE_PIECES = ["'", '"', ";", "--", "\x00", "$", ".", "system.", "/*", "*/", " ", "\\",
                  "`", "\u0430", "\uff41", "\u200b", "é", "%", "{", "}", "\n", "-", ":",
                  "\u202e", "(", ")", "=", "#", "?", "&", "\t", "\ud800", "😀"]
SAFE = string.ascii_letters + string.digits + "_"


def hostile_namespaces(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct names that break the namespace rule in every way we know of."""
    rng = random.Random(seed)
    names: set[str] = {"", "a" * 64, "0abc"}
    while len(names) < count:
        shape = rng.randrange(4)
        stem = "".join(rng.choice(SAFE) for _ in range(rng.randrange(0, 8)))
        if shape == 0:  # a hostile piece anywhere
            cut = rng.randrange(len(stem) + 1)
            name = stem[:cut] + rng.choice(HOSTILE_PIECES) + stem[cut:]
        elif shape == 1:  # several pieces: injection-looking strings
            name = "x" + "".join(rng.choice(HOSTILE_PIECES) + stem for _ in range(3))
        elif shape == 2:  # too long
            name = "n" + "".join(rng.choice(SAFE) for _ in range(63 + rng.randrange(1, 40)))
        else:  # leading digit
            name = rng.choice(string.digits) + stem
        names.add(name)
    return sorted(names)


HOSTILE = hostile_namespaces(10_000)


def test_generated_names_are_all_hostile() -> None:
    assert len(HOSTILE) == 10_000
    assert not any(NAMESPACE_PATTERN.fullmatch(name) for name in HOSTILE)


def test_ten_thousand_hostile_namespaces_are_refused(store_factory: StoreFactory,
                                                     soak: int) -> None:
    names = HOSTILE if soak == 1 else hostile_namespaces(10_000 * soak, seed=soak)
    for namespace in names:
        with pytest.raises(ConfigError):
            check_namespace(namespace)
        # Building the store (no connection is made before open()) already refuses it.
        with pytest.raises(ConfigError):
            store_factory.make(namespace)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=70).filter(lambda s: not NAMESPACE_PATTERN.fullmatch(s)))
def test_any_text_outside_the_pattern_is_refused(namespace: str) -> None:
    with pytest.raises(ConfigError):
        check_namespace(namespace)


@pytest.mark.parametrize("scheme", ["memory://", "sqlite:////tmp/x.db", "file:///tmp/x",
                                    "postgresql://u@127.0.0.1/db", "mongodb://127.0.0.1/db",
                                    "redis://127.0.0.1:6379/0"])
@pytest.mark.parametrize("namespace", ["", "a;drop", "x'--", "system.users", "a%00b", "a.b"])
def test_hostile_namespace_in_a_url_is_refused(scheme: str, namespace: str) -> None:
    separator = "&" if "?" in scheme else "?"
    with pytest.raises(ConfigError, match="namespace"):
        open_store(f"{scheme}{separator}namespace={namespace}")


UNSAFE = re.compile(r"\b(pickle|marshal|shelve)\b|(?<![\w.])eval\(|(?<![\w.])exec\(|"
                    r"yaml\.load\(|yaml\.unsafe_load|yaml\.Loader|yaml\.FullLoader")


def test_no_unsafe_deserialisation_in_the_package() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if UNSAFE.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []
