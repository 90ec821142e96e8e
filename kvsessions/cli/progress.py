"""The progress display of long commands: a one-line bar (documents, docs/s, ETA) on a
terminal, plain lines every few seconds otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from kvsessions.migration import MigrationProgress

__all__ = ["ProgressDisplay"]


class ProgressDisplay:
    """A one-line bar (documents, docs/s, ETA) on a terminal, plain lines every ``interval``
    seconds otherwise. Written by hand: no dependency for one line of text."""

    def __init__(self, label: str, *, stream: TextIO | None = None,
                 interval: float | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.1 if self.tty else 2.0)
        self.total: int | None = None
        self._last_shown = 0.0
        self._last: MigrationProgress | None = None
        self._drawn = False

    def __call__(self, progress: MigrationProgress) -> None:
        self._last = progress
        now = time.monotonic()
        if now - self._last_shown >= self.interval:
            self._last_shown = now
            self._show(progress)

    def _show(self, progress: MigrationProgress) -> None:
        if not self.enabled:
            return
        rate = progress.documents_per_second
        total = self.total
        if self.tty:
            if total:
                done = min(progress.documents, total)
                fraction = done / total if total else 1.0
                left = (total - done) / rate if rate > 0 else None
                eta = _clock(left) if left is not None else "?"
                counts = f"{done:,}/{total:,} docs {fraction:4.0%}"
            else:
                fraction = None
                eta = "?"
                counts = f"{progress.documents:,} docs"
            text = f"{counts}  {rate:,.0f} docs/s  ETA {eta}"
            width = shutil.get_terminal_size((80, 20)).columns
            room = width - len(self.label) - len(text) - 5
            if fraction is not None and room >= 10:
                bar_width = min(room, 40)
                filled = int(bar_width * fraction)
                bar = f"[{'#' * filled}{'.' * (bar_width - filled)}] "
            else:
                bar = ""
            line = f"{self.label} {bar}{text}"[: max(width - 1, 20)]
            self.stream.write("\r\x1b[K" + line)
            self._drawn = True
        else:
            of_total = f" of {total:,}" if total else ""
            self.stream.write(
                f"{self.label}: {progress.documents:,}{of_total} documents, {rate:,.0f} docs/s\n")
        self.stream.flush()

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def finish(self) -> None:
        if self._last is not None and (self._drawn or not self.tty):
            self._show(self._last)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
