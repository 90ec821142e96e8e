"""The partition rule (``kvsessions.kv.partitions``) and the key layout that follows it: one
session's head, messages and state share a partition, sessions do not, and each index is one
partition; runs are disjoint ranges of the key order."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from kvsessions.documents.keys import (
    app_state_key,
    file_expiry_key,
    file_key,
    message_key,
    message_prefix,
    owner_index_keys,
    session_index_keys,
    session_key,
    session_state_key,
    user_state_key,
)
from kvsessions.kv.partitions import (
    partition_of,
    run_bounds,
    run_of,
    run_of_range,
    single_key_run,
)
from kvsessions.kv.values import prefix_upper_bound

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
IDS = st.text(min_size=1, max_size=12)


def test_the_rule() -> None:
    assert partition_of("message:s1:m1") == "s1"
    assert partition_of("session:s1") == "s1"
    assert partition_of("plain") == ""
    assert partition_of("a:") == ""
    assert partition_of(":x:y") == "x"
    assert run_of("message:s1:m1") == "message:s1:"
    assert run_of("session:s1") == "session:s1"
    assert single_key_run("session:s1") and not single_key_run("message:s1:")
    assert run_bounds("message:s1:") == ("message:s1:", "message:s1;")
    assert run_bounds("session:s1") == ("session:s1", "session:s1\x00")
    assert run_of_range("message:s1:", "message:s1;") == "message:s1:"
    assert run_of_range("message:s1:m5", None) is None
    assert run_of_range("session:", "session;") is None


@given(IDS, IDS, IDS)
def test_one_session_is_one_partition(session_id: str, message_id: str, other: str) -> None:
    keys = [session_key(session_id), message_key(session_id, message_id),
            message_prefix(session_id) + "x", session_state_key(session_id)]
    assert {partition_of(key) for key in keys} == {partition_of(session_key(session_id))}
    if other != session_id:
        assert partition_of(session_key(other)) != partition_of(session_key(session_id))
    # Every key of the session's messages is in one run: a load reads one partition.
    prefix = message_prefix(session_id)
    assert run_of_range(prefix, prefix_upper_bound(prefix)) == prefix


@given(IDS, IDS, IDS)
def test_each_index_is_one_partition(session_id: str, user: str, app: str) -> None:
    entries = [*session_index_keys(session_id, "active", MOMENT),
               *owner_index_keys(session_id, user, app, MOMENT)]
    assert [partition_of(entry) for entry in entries] == [
        "sessions", "status", "user", "app", "owner"]
    assert partition_of(file_expiry_key(session_id, MOMENT)) == "file-expiry"
    assert partition_of(file_key(session_id)) == partition_of(session_key(session_id))
    assert partition_of(user_state_key(app, user)) == "user"
    assert partition_of(app_state_key(app)) == "app"


@given(st.lists(st.text(alphabet="ab:\U0010ffff", max_size=6), min_size=2, max_size=30))
def test_runs_are_disjoint_ranges_in_key_order(keys: list[str]) -> None:
    """Visiting the runs in the order of their names, each run's keys in order, is key
    order: what a scan across partitions relies on."""
    keys = sorted(set(keys))
    runs: dict[str, list[str]] = {}
    for key in keys:
        lower, upper = run_bounds(run_of(key))
        assert lower <= key and (upper is None or key < upper)
        runs.setdefault(run_of(key), []).append(key)
    assert [key for run in sorted(runs) for key in runs[run]] == keys
