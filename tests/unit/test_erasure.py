"""Erase requests: what ``streamrec erase`` builds passes the worker's check and the JSON Schema; bad ones fail both."""

import orjson
import pytest

from streamrec.events import InvalidEvent
from streamrec.stream.erasure import erase_request, parse_erase_request
from streamrec.stream.topics import validator

SCHEMA = validator("erasure.schema.json")


def test_built_requests_pass_both_checks():
    r = erase_request("alice", "ticket-7")
    SCHEMA.validate(r)
    assert parse_erase_request(orjson.dumps(r)) == r
    assert erase_request("bob")["request_id"] != erase_request("bob")["request_id"]


@pytest.mark.parametrize("value, kind", [
    (None, "schema"), (b"{", "not_json"), (b"\xff\xfe", "not_json"), (b"[1]", "schema"),
    (b'{"schema_version": 1, "user_id": "u"}', "schema"),
    (b'{"schema_version": 2, "user_id": "u", "request_id": "r"}', "schema"),
    (b'{"schema_version": 1, "user_id": "", "request_id": "r"}', "schema"),
    (b'{"schema_version": 1, "user_id": "u", "request_id": "r", "extra": 1}', "schema"),
    (b'{"schema_version": 1, "user_id": "u", "request_id": "r", "requested_at": -1}', "schema"),
    (b'{"schema_version": true, "user_id": "u", "request_id": "r"}', "schema"),
    (b'{"schema_version": 1, "user_id": "u", "request_id": "r", "requested_at": 1e400}', "not_json"),
    (b"x" * 5000, "too_large"),
])
def test_bad_requests_are_refused_with_a_kind(value, kind):
    with pytest.raises(InvalidEvent) as err:
        parse_erase_request(value)
    assert err.value.kind == kind
    try:
        doc = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return
    assert not SCHEMA.is_valid(doc)   # the schema agrees


# --- retention of inactive users ----------------------------------------------------------------------------------
def raw_erase(request: dict, user: str):
    from .test_pipeline import raw
    return raw(orjson.dumps(request), key=user.encode(), topic="user-erasure")


def test_expired_users_are_those_whose_last_event_is_older_than_the_retention():
    from streamrec.stream.erasure import expired_users
    states = [(b"old", {"last_seen": 100.0}), (b"new", {"last_seen": 950.0}), (b"gone", None),
              (b"edge", {"last_seen": 900.0})]
    assert list(expired_users(states, now=1000.0, retention_s=100.0)) == [("old", 900.0)]


def test_a_retention_erase_spares_a_user_who_acted_after_the_cut_off():
    from streamrec.stream.state import decode_state

    from .test_pipeline import ev, make, run
    p, store, sink = make()
    run(p.handle_batch([ev("quiet", "a", 10.0), ev("busy", "b", 10.0)]))
    run(p.handle_batch([ev("busy", "c", 500.0)]))          # acted after the sweep looked (cut-off 100)
    requests = [raw_erase(erase_request(u, f"retention-{u}", inactive_before=100.0), u) for u in ("quiet", "busy")]
    run(p.handle_batch(requests))
    assert b"quiet" not in store.data and store.tombstones == [b"quiet"]
    assert decode_state(store.data[b"busy"])["total"] == 2
    assert not sink.on("interactions-dlq")


def test_a_retention_request_passes_both_checks():
    request = erase_request("u", "retention-1", inactive_before=1.5)
    validator("erasure.schema.json").validate(request)
    assert parse_erase_request(orjson.dumps(request))["inactive_before"] == 1.5
    with pytest.raises(InvalidEvent):
        parse_erase_request(orjson.dumps({**request, "inactive_before": "yesterday"}))
