"""Timing helpers shared by every benchmark section: median of N runs, ratio to raw."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


def document(i: int, size: int = 2048) -> dict[str, Any]:
    """A ~``size`` byte session-like JSON document."""
    base = {"kind": "message", "v": 1, "message_id": f"m{i:08d}", "session_id": "s1",
            "role": "user", "created_at": "2026-11-21T10:00:00+00:00", "metadata": {"i": i},
            "content": ""}
    filler = size - len(orjson.dumps(base))
    base["content"] = "x" * max(0, filler)
    return base


@dataclass
class Row:
    section: str
    operation: str
    backend: str
    ours_per_s: float
    raw_per_s: float | None
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """Our time over raw time: 1.0 is as fast as the raw driver, 1.2 is 20 % slower."""
        if self.raw_per_s is None or self.ours_per_s == 0:
            return None
        return self.raw_per_s / self.ours_per_s


@dataclass
class BenchContext:
    repeats: int = 3
    scale: float = 1.0
    only: set[str] = field(default_factory=set)
    rows: list[Row] = field(default_factory=list)

    def n(self, count: int) -> int:
        return max(1, int(count * self.scale))

    def wanted(self, backend: str) -> bool:
        return not self.only or backend in self.only

    def row(self, section: str, operation: str, backend: str, ours_per_s: float,
            raw_per_s: float | None, *, target: float | None = None, note: str = "") -> Row:
        row = Row(section, operation, backend, ours_per_s, raw_per_s, target, note)
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    async def rate(self, operations: int, run: Callable[[], Awaitable[Any]],
                   setup: Callable[[], Awaitable[Any]] | None = None) -> float:
        """Median operations/s over ``repeats`` runs of ``run`` (each doing ``operations``)."""
        rates = []
        for _ in range(self.repeats):
            if setup is not None:
                await setup()
            start = time.perf_counter()
            await run()
            rates.append(operations / (time.perf_counter() - start))
        return statistics.median(rates)

    async def paired(self, operations: int, ours: Callable[[], Awaitable[Any]],
                     raw: Callable[[], Awaitable[Any]],
                     setup: Callable[[], Awaitable[Any]] | None = None) -> tuple[float, float]:
        """Rates of ``ours`` and ``raw``, interleaved run by run so drift hits both alike."""
        ours_rates, raw_rates = [], []
        for _ in range(self.repeats):
            for run, rates in ((raw, raw_rates), (ours, ours_rates)):
                if setup is not None:
                    await setup()
                start = time.perf_counter()
                await run()
                rates.append(operations / (time.perf_counter() - start))
        return statistics.median(ours_rates), statistics.median(raw_rates)


async def decode_scan(target: Any, prefix: str, expected: int) -> None:
    """Scan ``prefix`` on a store or a raw driver wrapper, decoding every value, and check that
    the scan saw ``expected`` documents (a short scan would flatter the rate)."""
    count = 0
    async for _, value in target.scan(prefix):
        orjson.loads(value)
        count += 1
    assert count == expected, count


async def repeat(n: int, make: Callable[[int], Awaitable[Any]]) -> None:
    for i in range(n):
        await make(i)


async def concurrently(n: int, tasks: int, make: Callable[[int], Awaitable[Any]]) -> None:
    async def worker(offset: int) -> None:
        for i in range(offset, n, tasks):
            await make(i)
    await asyncio.gather(*(worker(t) for t in range(tasks)))


def format_row(row: Row) -> str:
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
    raw = "" if row.raw_per_s is None else f"{row.raw_per_s:,.0f}"
    us = 1e6 / row.ours_per_s if row.ours_per_s else float("nan")
    verdict = ""
    if row.target is not None and row.ratio is not None:
        verdict = "ok" if row.ratio <= row.target else f"MISS (target {row.target})"
    return (f"| {row.section} | {row.operation} | {row.backend} | {row.ours_per_s:,.0f} | "
            f"{us:,.1f} | {raw} | {ratio} | {verdict} {row.note}".rstrip() + " |")


HEADER = ("| section | operation | backend | ours ops/s | ours µs/op | raw ops/s | "
          "ratio (ours time / raw time) | verdict |\n|---|---|---|---|---|---|---|---|")
