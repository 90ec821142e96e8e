"""Parallel migration: the keys under a prefix copied by several streams at once.

A stream copies the source keys in ``(after, upto]`` in key order, with its own checkpoint
(``checkpoint.stream_checkpoint_key``), so the whole copy stays resumable with any number of
workers. The ranges come from splitting, not from the key layout, so they fit any layout
(sessions, partitions, one huge session): a worker with nothing to do splits the running stream
with the most work left (estimated from the documents per unit of key space seen so far) at a
string between its position and its end, found by arithmetic on code points and checked with a
one-key probe of the source. A stream gives up the upper part of its range only while it has
not handed any key of that part to its writer: its reader re-reads its end before every batch.
Before any stream starts, the first ones are split until there is one per worker (or nothing is
worth splitting): those splits race no copy, so every worker has work from the first batch on,
whatever the load of the machine.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from kvsessions.kv.base import KVStore
from kvsessions.migration.batches import Items, drop_reserved

__all__ = ["Stream", "StreamPool", "key_between", "shared_length", "span_batches"]

logger = logging.getLogger("kvsessions.migration.streams")

_BASE = 0x110000  # code points: str order is code point order, which is UTF-8 byte order
_DIGITS = 16  # code points after the prefix that the arithmetic looks at
#: Seconds an idle worker waits before it tries again to split a stream.
_RETRY = 0.2
#: Probes (one-key scans) per split attempt, each halving the part given away.
_PROBES = 4
_MOVED_ON = object()


@dataclass(eq=False)
class Stream:
    """One range of keys and where its copy stands."""

    number: int
    #: The range: keys ``after < k <= upto`` (None: unbounded); ``upto`` shrinks on a split.
    after: str | None
    upto: str | None
    #: Where this run starts reading (``after``, or the last key of a resumed checkpoint).
    resume_after: str | None
    #: Documents its checkpoint said were copied before this run.
    copied_before: int = 0
    #: Documents handed to its writer in this run, the first and last of their keys.
    read: int = 0
    first: str | None = None
    position: str | None = None
    splittable: bool = True

    def handed(self, batch: Items) -> None:
        if self.first is None:
            self.first = batch[0][0]
        self.position = batch[-1][0]
        self.read += len(batch)


def _first(item: tuple[str, bytes]) -> str:
    return item[0]


def _cut(pending: Items, upto: str | None) -> bool:
    """Drop the keys past ``upto``; True when the range's end was reached."""
    if upto is None or not pending or pending[-1][0] <= upto:
        return False
    del pending[bisect.bisect_right(pending, upto, key=_first):]
    return True


async def span_batches(store: KVStore, prefix: str, stream: Stream,
                       size: int) -> AsyncGenerator[Items, None]:
    """The stream's documents in key order, in lists of ``size``, without reserved keys. The
    end is read again before each batch is handed over (a split may have moved it)."""
    pending: Items = []
    finished = False
    pages = store.scan_pages(prefix, start_after=stream.resume_after)
    try:
        async for page in pages:
            pending.extend(page)
            finished = _cut(pending, stream.upto)
            drop_reserved(pending)
            while len(pending) >= size or (finished and pending):
                finished = _cut(pending, stream.upto) or finished
                if not pending:
                    break
                batch = pending[:size]
                del pending[:size]
                stream.handed(batch)
                yield batch
            if finished:
                return
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()
    _cut(pending, stream.upto)
    if pending:
        stream.handed(pending)
        yield pending


def _number(key: str, skip: int) -> int:
    """``key``'s place in key order as a number (the first code points after ``skip``)."""
    value = 0
    for index in range(skip, skip + _DIGITS):
        value = value * _BASE + (ord(key[index]) if index < len(key) else 0)
    return value


def shared_length(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def key_between(low: str, high: str, skip: int = 0) -> str | None:
    """A string strictly between ``low`` and ``high`` near the middle of the key space between
    them (both start with the same ``skip`` characters), valid as a scan's ``start_after``
    (no NUL, no surrogate), or None when there is no room."""
    middle = (_number(low, skip) + _number(high, skip)) // 2
    digits: list[int] = []
    for _ in range(_DIGITS):
        middle, digit = divmod(middle, _BASE)
        digits.append(digit)
    while digits and digits[0] == 0:
        digits.pop(0)  # trailing NULs: the same place among keys, which hold none
    chars = []
    for digit in reversed(digits):
        if digit == 0:
            digit = 1
        elif 0xD800 <= digit <= 0xDFFF:
            digit = 0xE000
        chars.append(chr(digit))
    candidate = low[:skip] + "".join(chars)
    return candidate if low < candidate < high else None


class StreamPool:
    """Runs streams on ``workers`` workers; an idle worker splits a running stream (see the
    module docstring). ``probe(s)`` is the first source key after ``s`` (None: none);
    ``first_key``/``last_key`` bound the whole range; ``skip`` is the length of the prefix
    every key shares; streams estimated to hold fewer than ``min_split`` documents beyond
    their position are not split."""

    def __init__(self, workers: int, run: Callable[[Stream], Coroutine[Any, Any, None]],
                 probe: Callable[[str], Awaitable[str | None]], *, first_key: str | None,
                 last_key: str | None, skip: int, min_split: int, next_number: int) -> None:
        self.workers = workers
        self._run = run
        self._probe = probe
        self.first_key = first_key
        self.last_key = last_key
        self.skip = skip
        self.min_split = min_split
        self._next_number = next_number
        self.splits = 0

    async def run(self, streams: list[Stream]) -> None:
        waiting = deque(streams)
        while waiting and len(waiting) < self.workers:
            new = await self._split(dict(enumerate(waiting)))
            if new is None:
                break
            waiting.append(new)
        running: dict[asyncio.Task[None], Stream] = {}
        try:
            while waiting or running:
                while waiting and len(running) < self.workers:
                    stream = waiting.popleft()
                    running[asyncio.create_task(self._run(stream))] = stream
                timeout: float | None = None
                if len(running) < self.workers:
                    new = await self._split(running)
                    if new is not None:
                        waiting.append(new)
                        continue
                    timeout = _RETRY
                if not running:
                    break
                done, _ = await asyncio.wait(running, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del running[task]
                    task.result()  # a failed stream fails the migration
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _bounds(self, stream: Stream) -> tuple[str, str] | None:
        low = stream.position or stream.resume_after or self.first_key
        high = stream.upto or self.last_key
        if low is None or high is None or low >= high:
            return None
        return low, high

    def _estimate(self, stream: Stream, low: str, high: str, density: float | None) -> float:
        """Documents the stream is estimated to have left (infinite when nothing is known)."""
        width = _number(high, self.skip) - _number(low, self.skip)
        own = self._density(stream)
        rate = own if own is not None else density
        return math.inf if rate is None else width * rate

    def _density(self, stream: Stream) -> float | None:
        if stream.first is None or stream.position is None or stream.read < self.min_split:
            return None
        width = _number(stream.position, self.skip) - _number(stream.first, self.skip)
        return stream.read / max(width, 1)

    async def _split(self, running: Mapping[Any, Stream]) -> Stream | None:
        """Split the running stream with the most work left; None when none is worth it."""
        for _ in range(_PROBES):
            outcome = await self._try_split(running)
            if outcome is not _MOVED_ON:
                return outcome if isinstance(outcome, Stream) else None
        return None

    async def _try_split(self, running: Mapping[Any, Stream]) -> object:
        """A new stream, None, or ``_MOVED_ON`` when the chosen stream read past the split
        point while the probe ran (then a new choice is made at once)."""
        streams = [s for s in running.values() if s.splittable]
        known = [d for d in map(self._density, streams) if d is not None]
        density = sum(known) / len(known) if known else None
        best: tuple[float, Stream, str, str] | None = None
        for stream in streams:
            bounds = self._bounds(stream)
            if bounds is None:
                stream.splittable = False
                continue
            estimate = self._estimate(stream, *bounds, density)
            if estimate < 2 * self.min_split:
                continue
            if best is None or estimate > best[0]:
                best = (estimate, stream, *bounds)
        if best is None:
            return None
        _, stream, low, high = best
        upto = stream.upto
        middle = key_between(low, high, self.skip)
        for _ in range(_PROBES):
            if middle is None:
                break
            found = await self._probe(middle)
            if found is not None and found <= high:
                if stream.upto != upto or (stream.position is not None
                                           and stream.position >= middle):
                    return _MOVED_ON
                if not any(s is stream for s in running.values()):
                    return _MOVED_ON
                stream.upto = middle
                number = self._next_number
                self._next_number += 1
                self.splits += 1
                logger.debug("stream %d split at %r into stream %d", stream.number,
                             middle[:80], number)
                return Stream(number, middle, upto, middle)
            middle = key_between(low, middle, self.skip)
        stream.splittable = False
        return None
