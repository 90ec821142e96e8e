"""Checks of the arguments the session API shares (limits, statuses), in one wording."""

from __future__ import annotations

from kvsessions.documents.models import SESSION_STATUSES
from kvsessions.errors import InvalidValueError, ValidationError

__all__ = ["check_limit", "check_status"]


def check_limit(limit: object, name: str) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidValueError(f"{name} must be a whole number >= 0, not {limit!r}")


def check_status(status: object) -> None:
    """None (any status) or one of the session statuses."""
    if status is not None and status not in SESSION_STATUSES:
        raise ValidationError(f"unknown status {status!r}; one of "
                              f"{', '.join(SESSION_STATUSES)}", path="status")
