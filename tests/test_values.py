"""The value rules decide the same whichever way a document is checked: by the short walk of
small documents or by the byte screens of large ones."""

from __future__ import annotations

import orjson
import pytest

from kvsessions.errors import DocumentTooLargeError
from kvsessions.kv.values import MAX_DEPTH, check_value

FILLER_SMALL = {"a": 1}
FILLER_LARGE = {f"f{i}": i for i in range(200)}  # more values than the walk visits


@pytest.mark.parametrize("filler", [FILLER_SMALL, FILLER_LARGE], ids=["walked", "screened"])
@pytest.mark.parametrize("literal", [b"9223372036854775808", b"-9223372036854775809",
                                     b"18446744073709551616", b"99999999999999999999999"])
def test_integers_beyond_64_bits_are_refused(filler: dict[str, int], literal: bytes) -> None:
    value = orjson.dumps(filler)[:-1] + b',"big":' + literal + b"}"
    with pytest.raises(DocumentTooLargeError, match="64-bit"):
        check_value(value)


@pytest.mark.parametrize("filler", [FILLER_SMALL, FILLER_LARGE], ids=["walked", "screened"])
def test_limits_themselves_are_accepted(filler: dict[str, int]) -> None:
    deep: object = 1
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    document = {**filler, "max": 2**63 - 1, "min": -(2**63), "float": 1e300, "deep": deep}
    assert check_value(orjson.dumps(document)) == document


@pytest.mark.parametrize("filler", [FILLER_SMALL, FILLER_LARGE], ids=["walked", "screened"])
def test_one_level_too_deep_is_refused(filler: dict[str, int]) -> None:
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(DocumentTooLargeError, match="deeper"):
        check_value(orjson.dumps({**filler, "deep": deep}))


def test_checked_values_are_not_parsed_again_but_still_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the session layer hands down from ``encode_document`` (``CheckedValue``) is taken
    without a parse; plain bytes are parsed as always; the size limit holds for both."""
    from kvsessions.kv import values

    parsed: list[bytes] = []
    real = values.check_value
    monkeypatch.setattr(values, "check_value",
                        lambda value, key=None: parsed.append(value) or real(value, key=key))
    document = orjson.dumps({"kind": "message", "v": 1})
    values.check_written(values.CheckedValue(document))
    assert parsed == []
    values.check_written(document)
    assert parsed == [document]
    huge = values.CheckedValue(b'{"a": "' + b"x" * values.MAX_DOCUMENT_BYTES + b'"}')
    with pytest.raises(DocumentTooLargeError):
        values.check_written(huge)
