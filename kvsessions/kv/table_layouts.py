# ruff: noqa: S608  -- SQL is built only from a constant table name and placeholders
"""Versioned table layouts for the SQL stores: an append-only list of schema steps.

A store's table is created and upgraded by steps; step ``i`` (counted from 0) takes a table
from layout version ``i`` to ``i + 1``, and the version a table has reached is one row per
table in a small shared table, ``"kvsessions-layouts"`` (its name holds a ``-``, so no namespace
can take it). ``open()`` reads that row without taking any lock; only when steps are missing
does it take the database's write lock (SQLite) or an advisory lock (PostgreSQL), read the
version again, run the missing steps and record the new version, in one transaction. So a
table made by an older release is upgraded in place, two processes opening at once run each
step once, and opening a table that is up to date never waits for a writer.

Tables made before layouts were versioned have no row: version 0. Their step 1 (the table as
it was then, with ``IF NOT EXISTS``) changes nothing and records version 1. A row whose table
is gone (dropped by hand) counts as version 0 too, so the table is made again.

Rules for a new step: append it, never edit one that has shipped; keep it valid on a table
that is in use (rows stay readable by this release at every step); a table with a version
newer than the steps this release knows is refused, not downgraded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvsessions.errors import ConfigError

__all__ = ["LAYOUTS_TABLE", "TableLayouts", "quote_identifier"]

#: Quoted: the name has a '-', which no namespace (a plain identifier) can have.
LAYOUTS_TABLE = '"kvsessions-layouts"'


@dataclass(frozen=True)
class TableLayouts:
    """The steps of one store's table (SQL templates with ``{table}``, the quoted table name,
    and ``{name}``, the unquoted one, for index names), and the statements that keep the
    version row in the store's SQL dialect (``sqlite`` or ``postgresql``)."""

    steps: Sequence[Sequence[str]]
    dialect: str = "sqlite"

    @property
    def current(self) -> int:
        return len(self.steps)

    def _mark(self, position: int) -> str:
        return "?" if self.dialect == "sqlite" else f"${position}"

    @property
    def create_sql(self) -> str:
        return (f"CREATE TABLE IF NOT EXISTS {LAYOUTS_TABLE} "
                "(name text NOT NULL PRIMARY KEY, version integer NOT NULL)")

    @property
    def read_sql(self) -> str:
        """The version of the table named by the first parameter (the second: the name as
        the catalog wants it), no row when the table does not exist."""
        if self.dialect == "sqlite":
            exists = "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?)"
        else:
            exists = "to_regclass($2) IS NOT NULL"
        return f"SELECT version FROM {LAYOUTS_TABLE} WHERE name = {self._mark(1)} AND {exists}"

    def read_parameters(self, name: str) -> tuple[str, str]:
        return name, (name if self.dialect == "sqlite" else quote_identifier(name))

    @property
    def record_sql(self) -> str:
        return (f"INSERT INTO {LAYOUTS_TABLE} (name, version) "
                f"VALUES ({self._mark(1)}, {self._mark(2)}) "
                "ON CONFLICT (name) DO UPDATE SET version = excluded.version")

    def pending(self, version: int, *, name: str, owner: str) -> list[str]:
        """The statements that take table ``name`` from ``version`` to ``current``."""
        if version > self.current:
            raise ConfigError(
                f"table {name!r} in {owner} has layout version {version}, newer than the "
                f"{self.current} this release of kvsessions knows; upgrade kvsessions")
        table = quote_identifier(name)
        return [sql.format(table=table, name=name)
                for step in self.steps[version:] for sql in step]


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
