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
