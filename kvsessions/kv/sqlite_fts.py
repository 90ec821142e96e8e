# ruff: noqa: S608  -- SQL is built only from the checked namespace, hashed index names and quoted literals
"""The SQLite store's native text search: an FTS5 table kept by triggers on the store's table.

For a ``TextIndex`` (key prefix P, field F) of namespace ``ns``, made on first use::

    "ns:text_<hash>"       FTS5 table (body), rowid = the id of the key in the table below
    "ns:text_<hash>:keys"  id INTEGER PRIMARY KEY, key TEXT UNIQUE (the store's table is
                           WITHOUT ROWID, so FTS5 rows need ids of their own)

Triggers on the store's table, limited to keys under P, insert, replace and delete the FTS5
row of a key in the same statement (so in the same transaction) as the write of its document:
the index can never disagree with the table, whoever writes (another process too). Making the
index fills it from the rows already there, in one transaction with the triggers. A query
reads the best hits by bm25 (FTS5's ranking) and joins back to the table for the live value.
The unicode61 tokenizer compares case- and diacritic-insensitively: words of ``kv.text_search``
match the same documents except for words that differ only by diacritics.
"""

from __future__ import annotations

import sqlite3
import time

from kvsessions.kv.text_search import TextHit, TextIndex
from kvsessions.kv.values import prefix_upper_bound

__all__ = ["SQLiteTextIndex"]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class SQLiteTextIndex:
    """The SQL of one ``TextIndex`` on one namespace's table."""

    def __init__(self, namespace: str, index: TextIndex) -> None:
        table = f'"{namespace}"'  # a checked identifier
        self.fts = f'"{namespace}:{index.name}"'
        self.keys = f'"{namespace}:{index.name}:keys"'
        upper = prefix_upper_bound(index.prefix)
        lower = _literal(index.prefix)
        path = _literal("$." + index.field)
        body = (f"CASE WHEN json_type(CAST(new.value AS TEXT), {path}) = 'text' "
                f"THEN json_extract(CAST(new.value AS TEXT), {path}) END")

        def under(row: str) -> str:
            bound = f" AND {row}.key < {_literal(upper)}" if upper is not None else ""
            return f"{row}.key >= {lower}{bound}"

        trigger = f'"{namespace}:{index.name}:'
        remove = (f"DELETE FROM {self.fts} WHERE rowid = "
                  f"(SELECT id FROM {self.keys} WHERE key = old.key);")
        add = (f"INSERT OR IGNORE INTO {self.keys} (key) VALUES (new.key); "
               f"INSERT INTO {self.fts} (rowid, body) SELECT id, {body} FROM {self.keys} "
               f"WHERE key = new.key;")
        self.create = [
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.fts} USING fts5(body)",
            f"CREATE TABLE IF NOT EXISTS {self.keys} "
            "(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE)",
            f"CREATE TRIGGER IF NOT EXISTS {trigger}insert\" AFTER INSERT ON {table} "
            f"WHEN {under('new')} BEGIN {add} END",
            f"CREATE TRIGGER IF NOT EXISTS {trigger}update\" AFTER UPDATE ON {table} "
            f"WHEN {under('new')} BEGIN {remove} {add} END",
            f"CREATE TRIGGER IF NOT EXISTS {trigger}delete\" AFTER DELETE ON {table} "
            f"WHEN {under('old')} BEGIN {remove} "
            f"DELETE FROM {self.keys} WHERE key = old.key; END",
        ]
        stored_body = body.replace("new.value", "t.value")
        self.fill = [
            f"INSERT OR IGNORE INTO {self.keys} (key) SELECT key FROM {table} t "
            f"WHERE {under('t')}",
            f"INSERT INTO {self.fts} (rowid, body) SELECT k.id, {stored_body} FROM {table} t "
            f"JOIN {self.keys} k ON k.key = t.key WHERE {under('t')}",
        ]
        self.exists = ("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                       f"{namespace}:{index.name}:delete")
        self.search = (
            f"SELECT t.key, t.value, -bm25({self.fts}) FROM {self.fts} "
            f"JOIN {self.keys} k ON k.id = {self.fts}.rowid JOIN {table} t ON t.key = k.key "
            f"WHERE {self.fts} MATCH ? AND t.key >= ? AND (? IS NULL OR t.key < ?) "
            "AND (t.expires_at IS NULL OR t.expires_at > ?) "
            f"ORDER BY bm25({self.fts}), t.key LIMIT ? OFFSET ?")

    def ensure(self, db: sqlite3.Connection) -> None:
        """Make the index (tables, triggers, rows of what is stored) unless it exists: one
        write transaction, so two processes making it at once make it once."""
        sql, name = self.exists
        if db.execute(sql, (name,)).fetchone()[0]:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if not db.execute(sql, (name,)).fetchone()[0]:
                for statement in (*self.create, *self.fill):
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def page(self, db: sqlite3.Connection, terms: list[str], within: str, size: int,
             offset: int) -> list[TextHit]:
        match = " ".join('"' + term.replace('"', '""') + '"' for term in terms)
        upper = prefix_upper_bound(within)
        rows = db.execute(self.search, (match, within, upper, upper, time.time(), size,
                                        offset)).fetchall()
        return [TextHit(key, value, float(score)) for key, value, score in rows]
