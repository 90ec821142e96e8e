"""The decoded form of a message document says what ``message.v1.json`` says, field by field:
a change of the schema that the form misses fails here, not in a user's load."""

from __future__ import annotations

import typing

import msgspec

from kvsessions.documents.codec import CURRENT_VERSIONS
from kvsessions.documents.message_form import MessageForm
from kvsessions.documents.models import MESSAGE_ROLES
from kvsessions.documents.validation import load_schema


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(MessageForm, include_extras=True)


def test_the_form_has_the_schemas_fields_all_required_none_other() -> None:
    schema = load_schema("message", CURRENT_VERSIONS["message"])
    assert CURRENT_VERSIONS["message"] == 1, "a new message version needs a new form"
    assert list(MessageForm.__struct_fields__) == schema["required"]
    assert list(schema["properties"]) == schema["required"]
    assert schema["additionalProperties"] is False
    assert MessageForm.__struct_config__.forbid_unknown_fields
    assert not MessageForm.__struct_defaults__  # every field required


def test_the_forms_constants_roles_and_lengths_are_the_schemas() -> None:
    properties = load_schema("message", 1)["properties"]
    hints = _field_types()
    assert typing.get_args(hints["kind"]) == (properties["kind"]["const"],)
    assert typing.get_args(hints["v"]) == (properties["v"]["const"],)
    assert list(typing.get_args(hints["role"])) == properties["role"]["enum"]
    assert list(MESSAGE_ROLES) == properties["role"]["enum"]
    for name in ("message_id", "session_id"):
        base, meta = typing.get_args(hints[name])
        assert base is str and properties[name]["type"] == "string"
        assert (meta.min_length, meta.max_length) == (properties[name]["minLength"],
                                                      properties[name]["maxLength"])
    assert hints["content"] is str and properties["content"] == {"type": "string"}
    # Checked by the reader: the timestamp's form (all_utc_timestamps) and the metadata,
    # decoded by orjson and then required to be an object.
    assert hints["created_at"] is str
    assert properties["created_at"] == {"$ref": "#/$defs/utc_timestamp"}
    assert hints["metadata"] is msgspec.Raw and properties["metadata"] == {"type": "object"}
