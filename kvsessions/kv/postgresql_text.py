# ruff: noqa: S608  -- SQL is built only from the quoted table name, a hashed index name and quoted literals
"""The PostgreSQL store's native text search: PostgreSQL full-text search on a GIN index.

For a ``TextIndex`` (key prefix P, field F) the store makes, on first use, one partial index::

    CREATE INDEX "kvs_text_<hash>" ON <table>
        USING GIN (to_tsvector('simple', <F if it is a string>)) WHERE key >= 'P' AND key < 'P+1'

PostgreSQL keeps it in the same transaction as every write of the table, whoever writes. A
query repeats the index's expression and predicate (so the planner uses it), narrows the keys
to the prefix searched, and ranks by ``ts_rank``. The ``simple`` configuration lower-cases and
neither stems nor drops stop words, as ``kv.text_search.words`` does. Making the index takes a
lock that holds writes back for as long as the build runs (seconds for a million documents).
"""

from __future__ import annotations

import hashlib

from kvsessions.kv.table_layouts import quote_identifier
from kvsessions.kv.text_search import TextIndex
from kvsessions.kv.values import prefix_upper_bound

__all__ = ["PostgreSQLTextIndex"]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class PostgreSQLTextIndex:
    """The SQL of one ``TextIndex`` on one namespace's table; ``read`` is the store's
    expression for a row's value columns."""

    def __init__(self, namespace: str, index: TextIndex, read: str) -> None:
        table = quote_identifier(namespace)
        digest = hashlib.sha256(f"{namespace}\0{index.prefix}\0{index.field}".encode())
        name = quote_identifier(f"kvs_text_{digest.hexdigest()[:20]}")
        field = _literal(index.field)
        text = f"CASE WHEN jsonb_typeof(value -> {field}) = 'string' THEN value ->> {field} END"
        vector = f"to_tsvector('simple', {text})"
        upper = prefix_upper_bound(index.prefix)
        predicate = f"key >= {_literal(index.prefix)}"
        if upper is not None:
            predicate += f" AND key < {_literal(upper)}"
        self.create = (f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING GIN ({vector}) "
                       f"WHERE {predicate}")
        self.search = (
            f"SELECT key, {read}, ts_rank({vector}, q) AS score "
            f"FROM {table}, plainto_tsquery('simple', $1) AS q "
            f"WHERE {vector} @@ q AND {predicate} AND key >= $2 "
            "AND ($3::text IS NULL OR key < $3::text) "
            "AND (expires_at IS NULL OR expires_at > now()) "
            "ORDER BY score DESC, key LIMIT $4 OFFSET $5")
