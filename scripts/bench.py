#!/usr/bin/env python
"""kvsessions benchmarks: every figure beside the raw driver doing the same work in the same run.

    python scripts/bench.py                       # every section, median of 3
    python scripts/bench.py --section kv_embedded --only sqlite --scale 0.2

Sections live in scripts/benchmarks/ (one module each, with ``async def run(ctx)``). Servers
must be up (bash scripts/services.sh); MongoDB runs on a SecantusDB the bench starts itself.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import harness


def sections() -> list[str]:
    folder = Path(__file__).resolve().parent / "benchmarks"
    return sorted(m.name for m in pkgutil.iter_modules([str(folder)]) if m.name != "harness")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", action="append", choices=sections(),
                        help="run only these sections (repeatable)")
    parser.add_argument("--only", action="append", default=[],
                        help="only these backends (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    args = parser.parse_args()
    ctx = harness.BenchContext(repeats=args.repeats, scale=args.scale, only=set(args.only))
    print(harness.HEADER, flush=True)
    for name in args.section or sections():
        module = importlib.import_module(f"benchmarks.{name}")
        await module.run(ctx)
    misses = [r for r in ctx.rows if r.target is not None and r.ratio is not None
              and r.ratio > r.target]
    print(f"\n{len(ctx.rows)} rows, {len(misses)} over target", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
