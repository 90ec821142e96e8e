"""MongoDB store: a collection per namespace, ``_id`` is the key, the value a native document.

Stored shape, readable and queryable in mongosh::

    {"_id": "<key>", <the JSON object's own fields>, "_partition": "<the key's partition>",
     "_expires_at": <date, only with a ttl>}

The value's fields sit at the top level beside ``_id``, so a document nested 100 levels deep
(the most ``values.py`` accepts) is stored 100 levels deep, within MongoDB's limit. Field names
that MongoDB restricts or that BSON cannot hold are escaped, and only those (``mongodb_names``);
names written by other programs are read as they are. Strings may hold NUL (BSON strings are
length-prefixed); integers are int64 (``values.py`` refuses larger ones); floats stay doubles.

``ttl`` sets ``_expires_at`` under a sparse TTL index (``expireAfterSeconds=0``, created with
the first write that has a ttl), so MongoDB removes expired documents in the background; every
read also checks the date (client clock), so they are invisible at once.

``_partition`` is the key's partition (``kvsessions.kv.partitions``: the session id of a
session's keys), the field a sharded cluster shards on (``{"_partition": "hashed"}``: see
docs/stores.md), so one session's documents live on one shard and sessions spread over all.
Upserts name it beside ``_id`` in their filter (a sharded cluster needs the shard key there),
and a scan inside one run asks for it too, so ``mongos`` sends that scan to one shard (two:
documents of earlier releases have no ``_partition``, which shards as null, until ``kvsessions
upgrade`` adds it, ``upgrade_layout``). Scans over many partitions go to every shard, and
``mongos`` merges their ``_id`` order.

Scans read ``_id`` ranges (``$gt``/``$gte`` the cursor, ``$lt`` the prefix's upper bound, never
``$regex``) in binary order, through one cursor pinned to the ``_id`` index and read in batches,
resuming after the last key should the server drop it. Binary order needs the collection's
default (simple) collation, which ``open()`` checks; queries then need no collation argument
(SecantusDB 0.7 sorts by locale when a query names ``{"locale": "simple"}``; real MongoDB treats
both the same).

``put_many`` of several documents is one multi-document transaction where the deployment has
them (a replica set or ``mongos``, which ``open()`` asks with ``hello``): readers see all of the
batch or none, and a client that dies before the commit leaves nothing. A standalone server has
no transactions; there each document is written atomically and a reader may see part of a batch
(docs/contract.md#partitions).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from kvsessions.errors import (
    ConfigError,
    DocumentTooLargeError,
    EventLoopError,
    KVSessionsError,
    MissingDependencyError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from kvsessions.kv.base import (
    KeyRange,
    KVStore,
    expires_at,
    outlive_cancellation,
)
from kvsessions.kv.loops import PerLoop, describe_loop
from kvsessions.kv.mongodb_names import (
    EXPIRES_FIELD,
    PARTITION_FIELD,
    escape_names,
    has_escaped_name,
    has_non_finite,
    needs_escape,
    unescape_names,
)
from kvsessions.kv.options import (
    SHARED,
    Duration,
    Text,
    batch_size_option,
    read_options,
    unknown_options,
)
from kvsessions.kv.partitions import partition_of, run_of_range
from kvsessions.kv.text_search import (
    Accept,
    TextHit,
    TextIndex,
    field_of,
    ranked_pages,
    score_text,
)
from kvsessions.kv.values import prefix_upper_bound
from kvsessions.urls import StoreURL, parse_store_url, redact_url, url_secrets

try:
    from bson.codec_options import CodecOptions
    from bson.errors import InvalidDocument
    from pymongo import AsyncMongoClient, ReplaceOne, UpdateOne, WriteConcern
    from pymongo import errors as mongo_errors
    from pymongo.common import URI_OPTIONS_ALIAS_MAP, URI_OPTIONS_VALIDATOR_MAP
    from pymongo.uri_parser import parse_uri
except ImportError:  # exercised in a subprocess by the tests
    HAVE_PYMONGO = False
else:
    HAVE_PYMONGO = True

logger = logging.getLogger("kvsessions.kv.mongodb")

__all__ = ["EXPIRES_FIELD", "PARTITION_FIELD", "MongoDBStore", "escape_names", "unescape_names"]

DEFAULT_DATABASE = "kvsessions"
DEFAULT_CONNECT_TIMEOUT = 5.0
_TTL_INDEX = "kvsessions_expires_at_ttl"
#: Where a text search's score comes back: a name this store never writes (its documents'
#: names have every "%" escaped as "%25").
_SCORE = "%score"
# MongoDB refuses these characters (and NUL) in database names.
_BAD_DATABASE_NAME = re.compile(r'[/\\. "$*<>:|?\x00]')
#: Keys in one ``$in`` list: 40,000 keys of 512 bytes would pass MongoDB's 16 MiB limit on
#: one command; 5,000 stay below 3 MB.
_IN_CHUNK = 5000


# ---------------------------------------------------------------------- the store

class MongoDBStore(KVStore):
    """A MongoDB collection (or any server speaking its protocol) as a key-value store.

    Build it from a URL (``mongodb://user:pw@host:27017/db?namespace=sessions``), or hand in a
    client (PyMongo ``AsyncMongoClient`` or motor ``AsyncIOMotorClient``) or a database object;
    what is handed in is never closed here.
    """

    declared_options = (*SHARED, batch_size_option(1000),
                        Duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
                        Text("database", None))

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        database: Any = None,
        namespace: str | None = None,
        connect_timeout: float | None = None,
        durability: str | None = None,
        batch_size: int | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Our options (namespace, database, connect_timeout, durability, batch_size) come out
        of the URL; the rest are PyMongo's and stay in the URL given to the client."""
        if not HAVE_PYMONGO:
            raise MissingDependencyError("pymongo", "mongodb")
        parsed = parse_store_url(url) if url is not None else None
        settings = read_options(self.declared_options, {
            "namespace": namespace, "connect_timeout": connect_timeout,
            "durability": durability, "batch_size": batch_size,
            "database": database if isinstance(database, str) else None,
        }, parsed, keep_unknown=True)
        super().__init__(namespace=settings["namespace"])
        if parsed is not None:
            known = {name.lower() for name in (*URI_OPTIONS_VALIDATOR_MAP, *URI_OPTIONS_ALIAS_MAP)}
            unknown = [name for name in parsed.options if name.lower() not in known]
            if unknown:
                raise unknown_options(unknown, parsed)
        if url is None and client is None and (database is None or isinstance(database, str)):
            raise ConfigError("MongoDBStore needs a mongodb:// URL, a client= or a database=")
        if client is not None and database is not None and not isinstance(database, str):
            raise ConfigError("give MongoDBStore either client= or a database object, not both")
        self._url = parsed.with_options_left() if parsed is not None else None
        self._redacted = redact_url(url) if url is not None else None
        self._secrets = url_secrets(url) if url is not None else ()
        self._given_client = client
        self._given_database = None if isinstance(database, str) else database
        self._database_name = _database_name(url, settings["database"])
        if self._given_database is not None:
            self._database_name = str(self._given_database.name)
        self._connect_timeout: float = settings["connect_timeout"]
        self._durability: str = settings["durability"]
        self.scan_batch_size = settings["batch_size"]
        self._client_options = dict(client_options or {})
        self._per_loop = self._collections = PerLoop(self._connect, self._disconnect)
        self._text_indexes: set[TextIndex] = set()
        self._ttl_index_ready = False
        self._transactions = False

    @classmethod
    def from_url(cls, url: StoreURL, **given: Any) -> MongoDBStore:
        return cls(url.raw, **given)

    def __repr__(self) -> str:
        where = repr(self._redacted) if self._redacted is not None else "client=<given>"
        return (f"MongoDBStore({where}, database={self._database_name!r}, "
                f"namespace={self.namespace!r})")

    # ------------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        if self._given_database is None and self._given_client is None:
            await _refuse_unreachable(self._url or "", self._connect_timeout, repr(self))
        try:
            database = (await self._collections.get()).database
            await self._check_collation(database)
            await self._ask_transactions(database)
        except BaseException as exc:
            await self._close()
            if HAVE_PYMONGO and isinstance(exc, mongo_errors.ServerSelectionTimeoutError):
                # Its text ends in a topology dump of several hundred characters: keep the reason.
                reason = self._scrub(str(exc).split(", Timeout:")[0])
                raise StoreUnavailableError(f"open failed: {self!r} is unavailable ({reason})"
                                            ) from None
            raise
        self._ttl_index_ready = False

    async def _ask_transactions(self, database: Any) -> None:
        """Whether the server runs multi-document transactions: a replica set member names its
        set, ``mongos`` says ``isdbgrid``; a standalone server does neither."""
        hello = await database.command("hello")
        self._transactions = "setName" in hello or hello.get("msg") == "isdbgrid"

    async def _connect(self) -> Any:
        """The calling event loop's collection: of our own client, made here, or of the
        client or database given (which belongs to the loop that first used it)."""
        database = self._given_database
        if database is None and self._given_client is None:
            database = self._new_client().get_database(self._database_name)
        else:
            first_loop = self._collections.first_loop_if_other()
            if first_loop is not None:
                given = "client" if database is None else "database"
                raise EventLoopError(
                    f"{self!r} was given a {given} that belongs to {first_loop}; "
                    f"it cannot serve {describe_loop(asyncio.get_running_loop())}: give each "
                    "event loop its own client, or pass a URL instead")
            if database is None:
                database = self._given_client.get_database(self._database_name)
        write_concern = WriteConcern(w="majority", j=True) \
            if self._durability == "strict" else None
        return database.get_collection(
            self.namespace,
            codec_options=CodecOptions(document_class=dict, tz_aware=True, tzinfo=UTC),
            write_concern=write_concern,
        )

    async def _disconnect(self, collection: Any) -> None:
        if self._given_database is None and self._given_client is None:
            await collection.database.client.close()

    @property
    def _collection(self) -> Any:
        """The calling event loop's collection (``_ready`` made it)."""
        return self._collections.current()

    async def _ensure_ttl_index(self) -> None:
        """Create the TTL index with the first write that has a ttl: a store that never uses
        ttl keeps one index only (every extra index is work on every write). Sparse, so
        documents without an expiry take no room in it. Idempotent, cheap when it exists."""
        await self._collection.create_index(
            [(EXPIRES_FIELD, 1)], name=_TTL_INDEX, expireAfterSeconds=0, sparse=True)
        self._ttl_index_ready = True

    def _new_client(self) -> Any:
        options: dict[str, Any] = {}
        url_options = {name.lower() for name, _ in parse_qsl(urlsplit(self._url or "").query)}
        timeout_ms = int(self._connect_timeout * 1000)
        if "serverselectiontimeoutms" not in url_options:
            options["serverSelectionTimeoutMS"] = timeout_ms
        if "connecttimeoutms" not in url_options:
            options["connectTimeoutMS"] = timeout_ms
        options.update(self._client_options)
        return AsyncMongoClient(self._url, **options)

    async def _check_collation(self, database: Any) -> None:
        """A default collation other than simple would make ``_id`` compare (and be unique)
        by locale rules: keys like "a" and "A" would clash and scans leave byte order."""
        reply = await database.command("listCollections", filter={"name": self.namespace})
        if not reply["cursor"]["firstBatch"] and not self.create_missing:
            raise StoreNotFoundError(f"no kvsessions store at {self!r}: collection "
                                     f"{self.namespace!r} does not exist")
        for info in reply["cursor"]["firstBatch"]:
            collation = info.get("options", {}).get("collation")
            if collation and collation.get("locale") != "simple":
                raise ConfigError(
                    f"collection {self.namespace!r} has the default collation {collation}; "
                    "kvsessions needs binary key order (MongoDB's default): use a collection "
                    "created without a collation")

    async def _close(self) -> None:
        await self._collections.close()

    # ------------------------------------------------------------------ documents

    @staticmethod
    def _to_stored(key: str, value: bytes, ttl: float | None) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(value)
        if needs_escape(document):
            document = escape_names(document)
        stored = {"_id": key, **document, PARTITION_FIELD: partition_of(key)}
        if ttl is not None:
            deadline = expires_at(ttl)
            assert deadline is not None
            stored[EXPIRES_FIELD] = datetime.fromtimestamp(deadline, UTC)
        return stored

    @staticmethod
    def _to_value(stored: dict[str, Any]) -> bytes | None:
        """The value of a stored document (which this consumes), or None if it has expired.
        A document written by another program may hold what JSON has no form for (ObjectId,
        binary, Decimal128, NaN, which orjson would write as null): ``StoreError`` naming it."""
        key = stored.pop("_id")
        if stored.get(PARTITION_FIELD) == partition_of(key):
            del stored[PARTITION_FIELD]
        deadline = stored.pop(EXPIRES_FIELD, None)
        if deadline is not None:
            if type(deadline) is not datetime:
                raise StoreError(f"MongoDB document {key!r}: {EXPIRES_FIELD} is a "
                                 f"{type(deadline).__name__}, not a date")
            if deadline <= datetime.now(UTC):
                return None
        try:
            value = orjson.dumps(stored)
        except TypeError as exc:  # orjson.JSONEncodeError
            raise StoreError(f"MongoDB document {key!r} holds a value JSON has no form for "
                             f"({exc}); written by something other than kvsessions?") from None
        if b"null" in value and has_non_finite(stored):
            raise StoreError(f"MongoDB document {key!r} holds NaN or an infinity, which JSON "
                             "has no form for; written by something other than kvsessions?")
        # Every escaped name holds a '%'; a '%' in the text alone needs nothing undone.
        if b"%" in value and has_escaped_name(stored):
            value = orjson.dumps(unescape_names(stored))
        return value

    @staticmethod
    def _live() -> dict[str, Any]:
        """Filter for documents that have not expired."""
        return {EXPIRES_FIELD: {"$not": {"$lte": datetime.now(UTC)}}}

    # ------------------------------------------------------------------ hooks

    async def _get(self, key: str) -> bytes | None:
        stored = await self._collection.find_one({"_id": key})
        return None if stored is None else self._to_value(stored)

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        found: dict[str, bytes | None] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            async for stored in self._collection.find({"_id": {"$in": chunk}}):
                key = stored["_id"]
                found[key] = self._to_value(stored)
        return [found.get(key) for key in keys]

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        if ttl is not None and not self._ttl_index_ready:
            await self._ensure_ttl_index()
        stored = self._to_stored(key, value, ttl)
        for attempt in range(3):
            try:
                await outlive_cancellation(self._collection.replace_one(
                    _upsert_filter(key, attempt), stored, upsert=True))
                return
            except mongo_errors.DuplicateKeyError:
                # Two upserts of one new key raced, or the document is one of an earlier
                # release (no _partition): the retry finds it by _id and replaces it.
                if attempt == 2:
                    raise

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        if ttl is not None and not self._ttl_index_ready:
            await self._ensure_ttl_index()
        documents = [(key, self._to_stored(key, value, ttl)) for key, value in items]
        if self._transactions and len(documents) > 1:
            await outlive_cancellation(self._put_many_in_transaction(documents))
            return
        for attempt in range(3):
            operations = [ReplaceOne(_upsert_filter(key, attempt), stored, upsert=True)
                          for key, stored in documents]
            try:
                await outlive_cancellation(self._collection.bulk_write(operations, ordered=False))
                return
            except mongo_errors.BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if attempt == 2 or not errors or any(e.get("code") != 11000 for e in errors):
                    raise
                documents = [documents[error["index"]] for error in errors]

    async def _put_many_in_transaction(self, documents: list[tuple[str, Any]]) -> None:
        """The whole batch in one transaction (retried by the driver on a transient error). A
        duplicate key (a document of an earlier release, without ``_partition``, or a racing
        upsert of a new key) aborts it; the retry finds every document by ``_id``."""
        collection = self._collection
        started = collection.database.client.start_session()
        session = await started if inspect.isawaitable(started) else started
        try:
            for attempt in range(3):
                operations = [ReplaceOne(_upsert_filter(key, attempt), stored, upsert=True)
                              for key, stored in documents]

                async def write(session: Any, operations: list[Any] = operations) -> None:
                    await collection.bulk_write(operations, ordered=True, session=session)

                try:
                    await session.with_transaction(
                        write, write_concern=collection.write_concern)
                    return
                except (mongo_errors.BulkWriteError, mongo_errors.DuplicateKeyError) as exc:
                    details = getattr(exc, "details", None) or {}
                    errors = details.get("writeErrors", [{"code": getattr(exc, "code", None)}])
                    if attempt == 2 or any(e.get("code") != 11000 for e in errors):
                        raise
        finally:
            await session.end_session()

    async def _delete(self, key: str) -> bool:
        result = await outlive_cancellation(
            self._collection.delete_one({"_id": key, **self._live()}))
        return bool(result.deleted_count)

    async def _delete_many(self, keys: list[str]) -> int:
        count = 0
        for chunk in _chunks(keys):
            result = await outlive_cancellation(
                self._collection.delete_many({"_id": {"$in": chunk}, **self._live()}))
            count += int(result.deleted_count)
        return count

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        # One atomic step: the filter matches only an expired document, which is replaced; with
        # no document the upsert inserts; with a live one the upsert's insert hits the unique
        # _id index and fails, so of many concurrent calls exactly one succeeds.
        if ttl is not None and not self._ttl_index_ready:
            await self._ensure_ttl_index()
        stored = self._to_stored(key, value, ttl)
        now = datetime.now(UTC)
        for attempt in range(2):
            # The second attempt replaces an expired document that has no _partition (written
            # by an earlier release or another program); a live one fails both.
            expired = {**_upsert_filter(key, attempt), EXPIRES_FIELD: {"$lte": now}}
            try:
                await outlive_cancellation(
                    self._collection.replace_one(expired, stored, upsert=True))
            except mongo_errors.DuplicateKeyError:
                continue
            return True
        return False

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        """Read the stored document, compare its value with ``expected`` here (the bytes
        ``get`` returns), then one write filtered on the whole document as read (``$literal``,
        so no string in it is read as a field path). The server applies a filtered write to
        one document atomically: if anything changed it since the read, nothing is written."""
        if expected is None:
            if new is None:
                return await self._get(key) is None
            return await self._put_if_absent(key, new, ttl)
        stored = await self._collection.find_one({"_id": key})
        if stored is None or self._to_value(dict(stored)) != expected:
            return False
        unchanged = {"_id": key, "$expr": {"$eq": ["$$ROOT", {"$literal": stored}]}}
        if new is None:
            result = await outlive_cancellation(self._collection.delete_one(unchanged))
            return bool(result.deleted_count)
        if ttl is not None and not self._ttl_index_ready:
            await self._ensure_ttl_index()
        result = await outlive_cancellation(
            self._collection.replace_one(unchanged, self._to_stored(key, new, ttl)))
        return bool(result.matched_count)

    def _range_cursor(self, key_range: KeyRange, reverse: bool, batch_size: int,
                      limit: int = 0) -> Any:
        """A cursor over ``key_range`` in ``_id`` order, pinned to the ``_id`` index (which
        real MongoDB picks anyway; SecantusDB otherwise scans and sorts the collection)."""
        bounds: dict[str, str] = {
            "$gte" if key_range.lower_inclusive else "$gt": key_range.lower}
        if key_range.upper is not None:
            bounds["$lt"] = key_range.upper
        direction = -1 if reverse else 1
        query: dict[str, Any] = {"_id": bounds}
        run = run_of_range(key_range.lower, key_range.upper)
        if run is not None:
            # Inside one partition: a sharded cluster asks one shard (and the shard of null,
            # where documents of earlier releases without the field are).
            query[PARTITION_FIELD] = {"$in": [partition_of(run), None]}
        return self._collection.find(query, sort=[("_id", direction)],
                                     hint=[("_id", 1)], limit=limit, batch_size=batch_size)

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        stored_page = await self._range_cursor(key_range, reverse, limit, limit).to_list(None)
        last = stored_page[-1]["_id"] if len(stored_page) >= limit else None
        return self._items(stored_page), last

    async def _scan(
        self, key_range: KeyRange, reverse: bool, limit: int | None = None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """One cursor for the whole range, read in batches: a new keyset query per page would
        cost a query plan each (and on SecantusDB a pass over the range each). Should the
        server drop the cursor (idle for 10 minutes), the scan resumes after the last key."""
        # With a limit, batches no larger than it: the caller closes the scan when it has
        # enough, and expired documents (filtered here) must not count against it.
        batch = self.scan_batch_size if limit is None else min(self.scan_batch_size, limit)
        cursor = self._range_cursor(key_range, reverse, batch)
        try:
            while True:
                try:
                    stored_page = await cursor.to_list(batch)
                except mongo_errors.CursorNotFound:
                    cursor = self._range_cursor(key_range, reverse, batch)
                    continue
                if not stored_page:
                    return
                last = stored_page[-1]["_id"]
                key_range = KeyRange(key_range.lower, key_range.lower_inclusive, last) \
                    if reverse else KeyRange(last, False, key_range.upper)
                items = self._items(stored_page)
                if items:
                    yield items
        finally:
            await cursor.close()

    async def upgrade_layout(self) -> int:
        """Give ``_partition`` to the documents an earlier release wrote without it (one pass
        over the collection, in batches); the number of documents changed."""
        await self._ready()
        changed = 0
        operations: list[Any] = []
        cursor = self._collection.find({PARTITION_FIELD: {"$exists": False}},
                                       projection={"_id": 1}, batch_size=self.scan_batch_size)
        async for found in cursor:
            if isinstance(found["_id"], str):  # other programs' documents are left alone
                operations.append(UpdateOne(
                    {"_id": found["_id"], PARTITION_FIELD: {"$exists": False}},
                    {"$set": {PARTITION_FIELD: partition_of(found["_id"])}}))
            if len(operations) >= self.scan_batch_size:
                changed += await self._apply(operations)
                operations = []
        return changed + await self._apply(operations)

    async def _apply(self, operations: list[Any]) -> int:
        if not operations:
            return 0
        result = await outlive_cancellation(
            self._collection.bulk_write(operations, ordered=False))
        return int(result.modified_count)

    def _items(self, stored_page: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
        items: list[tuple[str, bytes]] = []
        for stored in stored_page:
            key = stored["_id"]
            value = self._to_value(stored)
            if value is not None:
                items.append((key, value))
        return items

    # ------------------------------------------------------------------ text search

    text_search = "mongodb"

    async def _search_text(self, index: TextIndex, terms: list[str], within: str, limit: int,
                           accept: Accept | None) -> list[TextHit]:
        """MongoDB's text index on the field, made on first use (``default_language`` none:
        no stemming, no stop words). ``$text`` matches any word; hits that lack one are
        dropped here, so a match needs every word as on every store. A server without text
        search (SecantusDB) is searched by the scan, with one warning."""
        if self.text_search == "scan":
            return await super()._search_text(index, terms, within, limit, accept)
        try:
            if index not in self._text_indexes:
                await self._collection.create_index(
                    [(index.field, "text")], name=f"text_{index.field}", default_language="none")
                self._text_indexes.add(index)
            return await self._native_search(index, terms, within, limit, accept)
        except mongo_errors.OperationFailure as exc:
            logger.warning("%r: no MongoDB text search (%s); searching by a scan",
                           self, self._scrub(str(exc))[:200])
            self.text_search = "scan"
            return await super()._search_text(index, terms, within, limit, accept)

    async def _native_search(self, index: TextIndex, terms: list[str], within: str,
                             limit: int, accept: Accept | None) -> list[TextHit]:
        upper = prefix_upper_bound(within)
        bounds: dict[str, Any] = {"$gte": within} if upper is None else {"$gte": within,
                                                                          "$lt": upper}
        search = " ".join(terms)

        async def page(size: int, offset: int) -> list[TextHit]:
            cursor = self._collection.find(
                {"$text": {"$search": search}, "_id": bounds},
                {_SCORE: {"$meta": "textScore"}},
                sort=[(_SCORE, {"$meta": "textScore"}), ("_id", 1)], skip=offset, limit=size)
            hits: list[TextHit] = []
            for stored in await cursor.to_list(None):
                score = float(stored.pop(_SCORE))
                key = stored["_id"]
                value = self._to_value(stored)
                if value is not None:
                    hits.append(TextHit(key, value, score))
            return hits

        async def every_word(key: str, value: bytes) -> bool:
            if score_text(field_of(value, index.field), terms) <= 0:
                return False
            return accept is None or await accept(key, value)

        return await ranked_pages(page, limit, every_word)

    # ------------------------------------------------------------------ errors

    def _classify_error(self, exc: Exception) -> type[KVSessionsError] | None:
        if not HAVE_PYMONGO:
            return None
        if isinstance(exc, mongo_errors.OperationFailure) and exc.code == 18:
            # Authentication failed: reported as PostgreSQL and Redis report it.
            return StoreUnavailableError
        if isinstance(exc, mongo_errors.ConnectionFailure):
            # ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout are all below it.
            return StoreUnavailableError
        if isinstance(exc, mongo_errors.DocumentTooLarge) or (
                isinstance(exc, mongo_errors.OperationFailure)
                and exc.code in (10334, 17419, 17420)):
            return DocumentTooLargeError
        if isinstance(exc, mongo_errors.ConfigurationError):
            return ConfigError
        if isinstance(exc, mongo_errors.PyMongoError | InvalidDocument):
            return StoreError
        return None


def _upsert_filter(key: str, attempt: int) -> dict[str, Any]:
    """The filter of an upsert of ``key``: with its partition, as a sharded cluster needs the
    shard key there; a retry (after a duplicate key) finds the document by ``_id`` alone, which
    also matches one of an earlier release, without ``_partition``."""
    if attempt == 0:
        return {"_id": key, PARTITION_FIELD: partition_of(key)}
    return {"_id": key}


def _chunks(keys: list[str]) -> list[list[str]]:
    return [keys[start:start + _IN_CHUNK] for start in range(0, len(keys), _IN_CHUNK)]


async def _refuse_unreachable(url: str, timeout: float, shown: str) -> None:
    """Fail at once, as PostgreSQL and Redis do, when no host of a ``mongodb://`` URL accepts a
    connection: PyMongo would retry for its whole server selection timeout, then report the
    topology. (``mongodb+srv://`` hosts come from DNS, and a socket path has no port: both are
    left to PyMongo.)"""
    if not url.startswith("mongodb://"):
        return
    try:
        nodes = parse_uri(url)["nodelist"]
    except Exception:  # PyMongo reports a malformed URL itself, in its own words
        return
    reasons = []
    for host, port in nodes:
        if "/" in host:
            return
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except ConnectionRefusedError:
            reasons.append(f"{host}:{port}: connection refused")
            continue
        except (OSError, TimeoutError) as exc:
            reasons.append(f"{host}:{port}: {getattr(exc, 'strerror', None) or 'no answer'}")
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise StoreUnavailableError(f"open failed: {shown} is unavailable ({'; '.join(reasons)})")


# ---------------------------------------------------------------------- URL helpers

def _database_name(url: str | None, option: str | None) -> str:
    path_name = ""
    if url is not None:
        try:
            path_name = unquote(urlsplit(url).path.lstrip("/"))
        except ValueError:
            path_name = ""
    if option and path_name and option != path_name:
        raise ConfigError(f"database={option!r} differs from the database {path_name!r} in "
                          f"{redact_url(url or '')}; give one of them")
    name = option or path_name or DEFAULT_DATABASE
    if _BAD_DATABASE_NAME.search(name) or len(name.encode()) > 63:
        raise ConfigError(f"database name {name[:70]!r} is not allowed by MongoDB")
    return name
