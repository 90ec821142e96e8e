"""Full-text search at the KV level: "documents under key prefix X whose text field F holds
every word of a query, best first". The contract knows nothing of sessions; the session layer
declares the one index it needs (``message:`` / ``content``).

A store searches natively where it can (SQLite FTS5, PostgreSQL's text search with a GIN
index, MongoDB's text index: ``KVStore._text_page``); every other store (and any store as a
fallback) runs ``scan_search``: one ordered scan of the prefix in pages, each document scored
by how often the query's words occur in its field, the best ``limit`` kept in a heap, so the
memory used is one page plus ``limit`` hits, whatever the store holds.

Words are what ``words`` finds: runs of letters, digits and ``_``, compared case-insensitively
(``str.casefold``). A document matches when its field holds every word of the query. Each
native index tokenizes in its own way (and ranks in its own way: bm25, ts_rank, textScore),
so for plain words every store finds the same documents, while the order of hits whose
scores differ only by those formulas may differ between stores.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from kvsessions.errors import InvalidValueError
from kvsessions.kv.values import check_prefix

if TYPE_CHECKING:
    from kvsessions.kv.base import KVStore

__all__ = ["MAX_QUERY_WORDS", "TextHit", "TextIndex", "scan_search", "score_text", "words"]

#: The most words a query may hold (each one is a term every index looks up).
MAX_QUERY_WORDS = 32
_WORD = re.compile(r"\w+")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

#: Decides whether a hit counts (the session layer's filters, e.g. by owner).
Accept = Callable[[str, bytes], Awaitable[bool]]


def words(text: str) -> list[str]:
    """The words of ``text``, case-folded, in order."""
    return _WORD.findall(text.casefold())


@dataclass(frozen=True, slots=True)
class TextIndex:
    """The top-level string field ``field`` of the documents whose key starts with
    ``prefix``."""

    prefix: str
    field: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if not self.prefix:
            raise InvalidValueError("a text index needs a key prefix (not the whole store)")
        if not isinstance(self.field, str) or not _FIELD.fullmatch(self.field):
            raise InvalidValueError(f"a text index's field must be a top-level name of "
                                    f"letters, digits and '_', not {self.field!r}")

    @property
    def name(self) -> str:
        """A short name, unique per (prefix, field), for the store's index objects."""
        digest = hashlib.sha256(f"{self.prefix}\0{self.field}".encode()).hexdigest()
        return f"text_{digest[:12]}"


@dataclass(frozen=True, slots=True)
class TextHit:
    """One document found: its key, its value, and its score (higher is better; each store
    scores in its own way, see the module docstring)."""

    key: str
    value: bytes
    score: float


def query_words(query: str) -> list[str]:
    """The distinct words of a query, checked: at least one, at most ``MAX_QUERY_WORDS``."""
    if not isinstance(query, str):
        raise InvalidValueError(f"a search query must be a str, not {type(query).__name__}")
    found = list(dict.fromkeys(words(query)))
    if not found:
        raise InvalidValueError(f"the search query {query[:60]!r} holds no word to look for")
    if len(found) > MAX_QUERY_WORDS:
        raise InvalidValueError(f"a search query may hold at most {MAX_QUERY_WORDS} words, "
                                f"not {len(found)}")
    return found


def score_text(text: object, terms: list[str]) -> float:
    """How often ``terms`` occur in ``text``; 0 unless every term occurs."""
    if not isinstance(text, str):
        return 0.0
    counts = Counter(words(text))
    found = [counts[term] for term in terms]
    return float(sum(found)) if all(found) else 0.0


def field_of(value: bytes, field: str) -> Any:
    """The field of a stored JSON document (None when absent or not an object)."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return document.get(field) if isinstance(document, dict) else None


async def scan_search(store: KVStore, index: TextIndex, terms: list[str], within: str,
                      limit: int, accept: Accept | None) -> list[TextHit]:
    """The fallback: score every document under ``within`` in one ordered scan, keep the best
    ``limit`` (ties: the smaller key first). Memory: one page and ``limit`` hits."""
    best: list[tuple[float, _Reversed, bytes]] = []  # a min-heap of the best so far
    async for page in store.scan_pages(within):
        for key, value in page:
            score = score_text(field_of(value, index.field), terms)
            if score <= 0:
                continue
            entry = (score, _Reversed(key), value)
            if len(best) >= limit and entry[:2] <= best[0][:2]:
                continue
            if accept is not None and not await accept(key, value):
                continue
            if len(best) < limit:
                heapq.heappush(best, entry)
            else:
                heapq.heapreplace(best, entry)
    ranked = sorted(best, key=lambda entry: entry[:2], reverse=True)
    return [TextHit(entry[1].key, entry[2], entry[0]) for entry in ranked]


async def ranked_pages(page: Callable[[int, int], Awaitable[list[TextHit]]], limit: int,
                       accept: Accept | None) -> list[TextHit]:
    """The first ``limit`` accepted hits of a native index, read in pages of its ranking
    (``page(size, offset)``): without ``accept`` that is one page."""
    if accept is None:
        return await page(limit, 0)
    hits: list[TextHit] = []
    size = max(4 * limit, 100)
    offset = 0
    async for hit in _pages(page, size, offset):
        if await accept(hit.key, hit.value):
            hits.append(hit)
            if len(hits) >= limit:
                break
    return hits


async def _pages(page: Callable[[int, int], Awaitable[list[TextHit]]], size: int,
                 offset: int) -> AsyncIterator[TextHit]:
    while True:
        batch = await page(size, offset)
        for hit in batch:
            yield hit
        if len(batch) < size:
            return
        offset += size


class _Reversed:
    """A key that orders backwards, so in the min-heap a smaller key is the better hit."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __lt__(self, other: _Reversed) -> bool:
        return self.key > other.key

    def __le__(self, other: _Reversed) -> bool:
        return self.key >= other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)
