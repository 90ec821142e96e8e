"""What a read does with a damaged message document: raise (the default) or skip and report.

A message document is *damaged* when it cannot be read as a message: not JSON, not an object,
another kind, a version this release cannot read, or a field the schema refuses. By default
every read raises the ``ValidationError`` naming its key (one damaged message then makes the
session unreadable until it is repaired or removed). With ``on_damaged="skip"`` (on the
``SessionStorage`` or per call) a read leaves the document out, logs a warning on the
``kvsessions`` logger and calls ``on_damaged_report(key)``, as the message stores of chat
frameworks do. A session head is never skipped: without it there is no session to return.
(The policy sees what the storage reads: a ``ValidatingStore`` given to ``SessionStorage`` is
the one it reads through, but one wrapped inside another store checks every read itself and
raises before any policy sees the document.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kvsessions.errors import ConfigError, ValidationError

__all__ = ["DamagedHandling", "DamagedPolicy", "DamagedReport",
           "check_damaged_policy"]

logger = logging.getLogger("kvsessions")

DamagedPolicy = Literal["raise", "skip"]
#: Called with the key of each damaged document a read skipped.
DamagedReport = Callable[[str], object]


def check_damaged_policy(value: object, origin: str = "on_damaged") -> DamagedPolicy:
    if value == "raise":
        return "raise"
    if value == "skip":
        return "skip"
    raise ConfigError.not_allowed(origin, value, "'raise' or 'skip'")


@dataclass(frozen=True, slots=True)
class DamagedHandling:
    """One read's policy and where it reports what it skipped."""

    policy: DamagedPolicy = "raise"
    report: DamagedReport | None = None

    @property
    def skips(self) -> bool:
        return self.policy == "skip"

    def damaged(self, key: str, error: ValidationError) -> None:
        """Raise ``error`` (policy ``raise``), or log and report ``key`` (policy ``skip``)."""
        if self.policy == "raise":
            raise error
        logger.warning("skipped a damaged document: %s", error)
        if self.report is not None:
            self.report(key)
