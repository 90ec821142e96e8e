"""How a session head changes under concurrent writers: the rules SessionStorage follows.

Concurrent writers, in any number of processes, need no lock: every change of a head is a
``compare_and_set`` from the head just read, repeated from a fresh read when another writer
got in first. Hence:

* ``message_count`` is exact once the writers are done: a writer counts the messages it
  adds before it stores them (each with ``put_if_absent``) and then takes back those that
  were already stored, so a message stored twice counts once; a writer removing messages
  takes off exactly those its delete removed; no change is lost to a concurrent writer
  (``kvsessions.sessions.message_edits`` says why counting first keeps the count exact);
* ``save_session`` merges with what others wrote: fields this object changed since it was
  loaded or last saved here are written (``metadata`` key by key: the top-level keys it set,
  changed or removed), the others keep the stored value, ``updated_at``
  never goes back (unless this object set it back), and the count is the stored count plus
  the messages this save created minus those it removed (a delete that found the message
  gone, removed by another writer, does not count);
* ``delete_session`` first marks the head ``deleting`` (such a session reads as absent), then
  deletes the messages, then the head. An append or save that finds the mark, or finds the
  head gone, removes the messages it wrote and fails (``SessionNotFoundError``; a save returns
  False), so a deleted session never comes back, whole or in part, and no message outlives
  its session. A save of an object that was loaded, listed or saved here before its session
  was deleted (or deleted and created anew, told apart by ``created_at``) returns False and
  writes nothing; an object never stored here creates the session. A delete that was
  interrupted is finished by running ``delete_session`` again.

Every write of a head adds 1 to its ``revision`` (``next_revision``; a new head is revision
1, a version 1 head reads as 0), so "only if unchanged" is one comparison
(``check_revision``), repeated on every read of the compare-and-set loop.

A writer killed between counting a message and storing it leaves the count one above what is
stored; a full ``load_session`` reports the number of messages stored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import orjson

from kvsessions.documents.codec import parse_timestamp
from kvsessions.errors import InvalidValueError, RevisionConflictError
from kvsessions.sessions.message_changes import Fingerprint

__all__ = [
    "DELETING",
    "Head",
    "SavedState",
    "check_expected_revision",
    "check_revision",
    "head_fields",
    "is_stale",
    "merged_head",
    "merged_metadata",
    "next_revision",
]

#: The status a head has while its session is being deleted (never a model's status).
DELETING = "deleting"
#: Head fields a save writes when this object changed them, else keeps as stored.
MERGED_FIELDS = ("model", "created_at", "status", "metadata")


@dataclass
class SavedState:
    """What one storage stored of one session object: a fingerprint of each message it loaded
    or saved (``kvsessions.sessions.message_changes``: how a save finds new, edited and
    removed messages), and the object's head fields as of its last load or save here (None:
    never stored through this storage)."""

    messages: dict[str, Fingerprint] = field(default_factory=dict)
    base: dict[str, Any] | None = None


#: A head as read: the stored bytes (for compare_and_set) and the decoded document.
Head = tuple[bytes, dict[str, Any]]


def head_fields(document: dict[str, Any], *, decoded: bool = False) -> dict[str, Any]:
    """The head fields a save compares, as values (timestamps parsed, metadata copied), so
    that later changes to the object are seen and spellings of one instant are equal.
    ``decoded``: the document was just decoded from JSON, so a JSON round trip copies its
    metadata exactly, several times faster than ``deepcopy`` (listings copy 100 at a time)."""
    fields = {name: document[name] for name in ("model", "status")}
    for name in ("created_at", "updated_at"):
        fields[name] = parse_timestamp(document[name], path=name)
    metadata = document["metadata"]
    fields["metadata"] = (orjson.loads(orjson.dumps(metadata)) if decoded
                          else copy.deepcopy(metadata))
    return fields


def is_stale(head: Head | None, saved: SavedState) -> bool:
    """Whether a save of this object must write nothing: its session is being deleted, or
    was deleted (and maybe created anew: another ``created_at``) after this storage stored,
    loaded or listed it. An object never stored here may create the session."""
    if head is None:
        return saved.base is not None
    current = head[1]
    if current["status"] == DELETING:
        return True
    return saved.base is not None and parse_timestamp(
        current["created_at"], path="created_at") != saved.base["created_at"]


def merged_head(current: dict[str, Any], mine: dict[str, Any], base: dict[str, Any] | None,
            created: int) -> dict[str, Any]:
    """The head a save writes over ``current``: the fields this object changed since
    ``base`` (all of them without a base), the stored value of the others, the later
    ``updated_at`` (or this object's, when it set it back), and the stored count plus the
    messages this save created minus those it removed (``created``; never below 0)."""
    merged = dict(current)
    changed = head_fields(mine)
    for name in MERGED_FIELDS:
        if base is None or changed[name] != base[name]:
            merged[name] = mine[name]
    if base is not None and changed["metadata"] != base["metadata"]:
        merged["metadata"] = merged_metadata(current["metadata"], base["metadata"],
                                             mine["metadata"])
    updated = changed["updated_at"]
    set_back = base is not None and updated < base["updated_at"]
    if set_back or updated > parse_timestamp(current["updated_at"], path="updated_at"):
        merged["updated_at"] = mine["updated_at"]
    merged["message_count"] = max(0, current["message_count"] + created)
    return merged


_MISSING = object()


def merged_metadata(current: dict[str, Any], base: dict[str, Any],
                    mine: dict[str, Any]) -> dict[str, Any]:
    """The stored metadata with the top-level keys this object set, changed or removed since
    ``base`` applied (so two writers changing different keys both keep theirs)."""
    merged = dict(current)
    for name in base.keys() | mine.keys():
        value = mine.get(name, _MISSING)
        if value != base.get(name, _MISSING):
            if value is _MISSING:
                merged.pop(name, None)
            else:
                merged[name] = value
    return merged


def next_revision(document: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """``document`` (changed in place and returned) as the next revision of ``current``
    (None: a new head, revision 1). Call it last, after deciding the head changes at all."""
    document["revision"] = 1 if current is None else current.get("revision", 0) + 1
    return document


def check_expected_revision(expected: object) -> None:
    """None (no condition) or a whole number >= 0 (0: never written)."""
    if expected is not None and (type(expected) is not int or expected < 0):
        raise InvalidValueError(f"expected_revision must be a whole number >= 0 or None, "
                                f"not {expected!r}")


def check_revision(what: str, expected: int | None, current: dict[str, Any] | None) -> None:
    """Raise ``RevisionConflictError`` when ``expected`` is given and ``current`` (None: not
    stored, revision 0) is at another revision."""
    if expected is None:
        return
    actual = 0 if current is None else current.get("revision", 0)
    if actual != expected:
        raise RevisionConflictError(what, expected, actual)
