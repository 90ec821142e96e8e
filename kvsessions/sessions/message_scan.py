"""Reading message documents: one at a time, or a key range of one session in either order,
under a damaged-data policy (``kvsessions.sessions.damaged``)."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from kvsessions.documents.codec import decode_document, document_to_message
from kvsessions.documents.models import ChatMessage
from kvsessions.documents.validation import validate_document
from kvsessions.errors import ValidationError
from kvsessions.kv.base import KVStore, closed_after
from kvsessions.sessions.damaged import DamagedHandling
from kvsessions.sessions.message_reader import message_from_document, messages_from_page
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["parse_message", "read_message", "scan_messages"]

_loads = orjson.loads
#: Documents the first and the largest chunk of a bounded or filtered scan read.
_FIRST_CHUNK, _LAST_CHUNK = 32, 4096


def _shared_prefix(first: str, second: str) -> str:
    size = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        size += 1
    return first[:size]


def parse_message(documents: ValidatingStore, key: str, value: bytes) -> ChatMessage:
    """The message stored as ``value`` under ``key``, or the ``ValidationError`` naming what
    is wrong. A document in the form this release writes is checked field by field on the
    spot (``message_from_document``); anything else takes the full path (upcast, JSON
    Schema), which names what is wrong."""
    try:
        document = _loads(value)
    except orjson.JSONDecodeError:
        document = None
    message = message_from_document(document)
    if message is not None:
        return message
    document = decode_document(value, key=key)
    if documents.validate_reads:
        validate_document(document, key=key)
    try:
        return document_to_message(document, key=key)
    except (KeyError, TypeError, AttributeError) as exc:  # reads not validated
        raise ValidationError(f"not a readable message document ({type(exc).__name__})",
                              key=key, kind="message") from None


def read_message(documents: ValidatingStore, key: str, value: bytes,
                 handling: DamagedHandling) -> ChatMessage | None:
    """``parse_message``, or None for a damaged document the policy skips."""
    try:
        return parse_message(documents, key, value)
    except ValidationError as error:
        handling.damaged(key, error)
        return None


async def scan_messages(
    raw: KVStore,
    documents: ValidatingStore,
    prefix: str,
    handling: DamagedHandling,
    *,
    start_after: str | None = None,
    limit: int | None = None,
    reverse: bool = False,
    stop_at: str | None = None,
    keep: Callable[[ChatMessage], bool] | None = None,
) -> list[ChatMessage]:
    """Up to ``limit`` messages under ``prefix`` in key order (descending with ``reverse``),
    after ``start_after`` and before ``stop_at`` (both exclusive, in the scan's order), each
    parsed once; those ``keep`` refuses and damaged ones the policy skips are not counted, so
    the scan goes on past them. Without a filter only ``limit`` documents are read; with one,
    or with ``stop_at``, the scan reads in growing chunks, so it reads at most about twice
    what lies in the range (the store's scan knows no upper bound but the prefix, which is
    narrowed to what both bounds share)."""
    if start_after is not None and stop_at is not None:
        shared = _shared_prefix(start_after, stop_at)
        if len(shared) > len(prefix) and shared.startswith(prefix):
            prefix = shared  # every key between the bounds starts with it
    messages: list[ChatMessage] = []
    cursor = start_after
    chunk = _FIRST_CHUNK
    while True:
        wanted = None if limit is None else limit - len(messages)
        if wanted == 0:
            return messages
        if keep is None and (wanted is not None or stop_at is None):
            fetch = wanted
        else:
            fetch = chunk if wanted is None else max(wanted, chunk)
            chunk = min(2 * chunk, _LAST_CHUNK)
        seen = 0
        last: str | None = None
        async with closed_after(raw.scan_pages(prefix, start_after=cursor, limit=fetch,
                                           reverse=reverse)) as pages:
            async for page in pages:
                seen += len(page)
                ended = False
                if stop_at is not None and (page[-1][0] <= stop_at if reverse
                                            else page[-1][0] >= stop_at):
                    page = [item for item in page
                            if (item[0] > stop_at if reverse else item[0] < stop_at)]
                    ended = True  # keys are in scan order: the range ends in this page
                if page:
                    last = page[-1][0]
                    if _add_page(documents, page, handling, keep, limit, messages):
                        return messages
                if ended:
                    return messages
        if fetch is None or last is None or seen < fetch:
            return messages  # the range is exhausted
        cursor = last  # read on: documents were skipped, or the chunk ended in the range


def _add_page(documents: ValidatingStore, page: list[tuple[str, bytes]],
              handling: DamagedHandling, keep: Callable[[ChatMessage], bool] | None,
              limit: int | None, messages: list[ChatMessage]) -> bool:
    """Add the messages of ``page`` that ``keep`` takes to ``messages``, up to ``limit`` in
    all; whether the limit is reached. The page is decoded at once (``messages_from_page``)
    or, when that path is not sure of it, one document at a time (each damaged one then
    raised or skipped by the policy, none read past the limit)."""
    batch = messages_from_page(page)
    if batch is not None:
        if keep is not None:
            batch = [message for message in batch if keep(message)]
        room = None if limit is None else limit - len(messages)
        if room is not None and len(batch) >= room:
            messages.extend(batch[:room])
            return True
        messages.extend(batch)
        return False
    for key, value in page:
        try:
            message = parse_message(documents, key, value)
        except ValidationError as error:
            handling.damaged(key, error)
            continue
        if keep is not None and not keep(message):
            continue
        messages.append(message)
        if limit is not None and len(messages) >= limit:
            return True
    return False
