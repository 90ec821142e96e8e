"""Benchmark sections for scripts/bench.py. Each module defines

    async def run(ctx: BenchContext) -> None

and records rows with ``ctx.row(...)``: the library's time beside the raw driver doing the
same work in the same run, as ops/s, µs per op and a ratio (library time / raw time).
"""
