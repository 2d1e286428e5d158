"""apply_event: bounded history in time order, counters, first/last seen, dedupe of redelivered events."""

from __future__ import annotations

import copy
import json

import pytest

from streamrec.events import Interaction
from streamrec.stream.state import (STATE_VERSION, StateError, apply_event, decode_state, encode_state,
                                   history_items, is_duplicate, new_state, seen_items)


def ev(n: int, item: str | None = None, ts: float | None = None, etype: str = "view", eid: str | None = None):
    return Interaction(eid or f"e{n}", "u", item or f"i{n}", etype, float(n) if ts is None else ts)


def apply_all(events, state=None, **kw):
    flags = []
    for e in events:
        state, applied = apply_event(state, e, **kw)
        flags.append(applied)
    return state, flags


def test_first_event_from_none():
    s, applied = apply_event(None, ev(1, ts=100.0, etype="purchase"))
    assert applied
    assert s == {"history": [["i1", "purchase", 100.0]], "counts": {"purchase": 1}, "total": 1,
                 "first_seen": 100.0, "last_seen": 100.0, "recent_event_ids": ["e1"], "v": STATE_VERSION}


def test_counters_by_type_and_total():
    types = ["view", "view", "click", "purchase", "view", "rating"]
    s, flags = apply_all([ev(n, etype=t) for n, t in enumerate(types)])
    assert all(flags)
    assert s["counts"] == {"view": 3, "click": 1, "purchase": 1, "rating": 1}
    assert s["total"] == 6


def test_redelivered_event_is_applied_once():
    s1, _ = apply_all([ev(1), ev(2)])
    snapshot = copy.deepcopy(s1)
    s2, applied = apply_event(s1, ev(1))
    assert not applied
    assert s2 == snapshot
    assert is_duplicate(s1, ev(1)) and not is_duplicate(s1, ev(3))
    # same id, different content (a retried producer) is still the same event
    s3, applied = apply_event(s1, ev(99, item="other", eid="e2"))
    assert not applied and s3 == snapshot


def test_input_state_is_not_mutated():
    s1, _ = apply_all([ev(1), ev(2), ev(3)])
    snapshot = copy.deepcopy(s1)
    s2, applied = apply_event(s1, ev(4, ts=1.5), history_size=3, dedupe_window=3)
    assert applied
    assert s1 == snapshot
    assert s2 is not s1 and s2["history"] is not s1["history"]


def test_history_is_bounded_keeping_the_newest():
    s, _ = apply_all([ev(n) for n in range(10)], history_size=3)
    assert history_items(s) == ["i7", "i8", "i9"]
    assert s["total"] == 10          # counters are lifetime, not bounded


def test_late_event_slots_in_by_timestamp():
    s, _ = apply_all([ev(1, ts=10.0), ev(2, ts=30.0), ev(3, ts=20.0)])
    assert history_items(s) == ["i1", "i3", "i2"]
    assert [h[2] for h in s["history"]] == [10.0, 20.0, 30.0]
    assert s["first_seen"] == 10.0 and s["last_seen"] == 30.0


def test_late_event_older_than_full_history_is_dropped_but_counted():
    s, _ = apply_all([ev(n, ts=100.0 + n) for n in range(3)], history_size=3)
    s2, applied = apply_event(s, ev(9, ts=1.0), history_size=3)
    assert applied
    assert history_items(s2) == history_items(s)
    assert s2["total"] == 4 and s2["first_seen"] == 1.0 and s2["last_seen"] == 102.0


def test_equal_timestamps_keep_arrival_order():
    s, _ = apply_all([ev(1, ts=5.0), ev(2, ts=5.0), ev(3, ts=5.0)])
    assert history_items(s) == ["i1", "i2", "i3"]


def test_first_and_last_seen_out_of_order():
    s, _ = apply_all([ev(1, ts=50.0), ev(2, ts=10.0), ev(3, ts=70.0), ev(4, ts=60.0)])
    assert (s["first_seen"], s["last_seen"]) == (10.0, 70.0)


def test_dedupe_window_is_bounded_and_oldest_ids_expire():
    s, _ = apply_all([ev(n) for n in range(6)], dedupe_window=4)
    assert s["recent_event_ids"] == ["e2", "e3", "e4", "e5"]
    assert apply_event(s, ev(5), dedupe_window=4)[1] is False
    # e0 fell out of the window: a redelivery that late is applied again (documented trade-off)
    assert apply_event(s, ev(0), dedupe_window=4)[1] is True


@pytest.mark.parametrize("size", [0, 1, 2])
def test_small_limits(size):
    s, _ = apply_all([ev(n) for n in range(5)], history_size=size, dedupe_window=size)
    assert len(s["history"]) == size
    assert len(s["recent_event_ids"]) == size
    assert s["total"] == 5


def test_state_survives_a_json_round_trip():
    """The Faust changelog stores the state as JSON: lists, not tuples; applying must keep working on it."""
    s, _ = apply_all([ev(1), ev(2)])
    restored = json.loads(json.dumps(s))
    assert restored == s
    assert apply_event(restored, ev(2))[1] is False
    s2, applied = apply_event(restored, ev(3, ts=1.5))
    assert applied and history_items(s2) == ["i1", "i3", "i2"]


def test_history_items_and_seen_items():
    assert history_items(None) == [] and seen_items(None) == set()
    assert history_items(new_state()) == []
    s, _ = apply_all([ev(1, item="a"), ev(2, item="b"), ev(3, item="a")])
    assert history_items(s) == ["a", "b", "a"]       # repeats kept, oldest first
    assert seen_items(s) == {"a", "b"}


# --- the stored form: versioned, migrated on read, a clear error when unreadable -----------------------------------

V1 = (b'{"history":[["a","view",1.0],["b","click",2.0]],"counts":{"view":1,"click":1},"total":2,'
      b'"first_seen":1.0,"last_seen":2.0,"recent_event_ids":["e1","e2"]}')   # what the first release wrote


def test_a_version_1_state_is_migrated_on_read_and_keeps_its_content():
    s = decode_state(V1)
    assert s["v"] == STATE_VERSION == 2
    assert history_items(s) == ["a", "b"] and s["total"] == 2 and s["recent_event_ids"] == ["e1", "e2"]
    # the dedupe ring survives the migration: a redelivered e2 is still recognised
    assert apply_event(s, Interaction("e2", "u", "b", "click", 2.0))[1] is False
    again, applied = apply_event(s, Interaction("e3", "u", "c", "view", 3.0))
    assert applied and decode_state(encode_state(again)) == again


def test_current_states_round_trip():
    s, _ = apply_all([ev(1), ev(2)])
    assert s["v"] == STATE_VERSION and decode_state(encode_state(s)) == s
    assert decode_state(None) is None


@pytest.mark.parametrize("raw,match", [
    (b'{"history": [', "not JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"v": 99, "history": []}', "format version 99"),
    (b'{"v": "2"}', "format version"),
    (b'{"v": 2, "history": []}', "lacks counts"),
])
def test_an_unreadable_state_is_a_state_error(raw, match):
    with pytest.raises(StateError, match=match):
        decode_state(raw)
