"""parse_event / validate_event: dead-letter kinds, field rules, and agreement with interaction.schema.json."""

from __future__ import annotations

import copy
import json

import pytest

from streamrec.events import EVENT_TYPES, MAX_ID_LEN, MAX_PROPERTIES, Interaction, InvalidEvent, parse_event, \
    validate_event
from streamrec.stream.topics import validator

BASE = {"schema_version": 1, "event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view",
        "timestamp": 1_700_000_000}


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def kind_of(data: bytes | None, **kw) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(data, **kw)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == str(info.value)
    return info.value.kind


# --- happy path ---------------------------------------------------------------------------------------------
def test_parse_valid_view():
    e = parse_event(raw(BASE))
    assert e == Interaction("e1", "u1", "i1", "view", 1_700_000_000.0, None, {})
    assert isinstance(e.timestamp, float)


def test_parse_rating_coerces_value_to_float_and_keeps_properties():
    e = parse_event(raw(dict(BASE, event_type="rating", value=4, properties={"device": "ios"})))
    assert e.value == 4.0 and isinstance(e.value, float)
    assert e.properties == {"device": "ios"}


def test_to_bytes_round_trip_and_matches_schema():
    schema = validator("interaction.schema.json")
    for e in (Interaction("a", "b", "c", "click", 12.5),
              Interaction("a", "b", "c", "rating", 0.0, 3.5, {"k": [1, 2]})):
        assert parse_event(e.to_bytes()) == e
        assert e.to_json()["schema_version"] == 1
        schema.validate(e.to_json())


def test_optional_value_allowed_on_non_rating():
    assert parse_event(raw(dict(BASE, value=2))).value == 2.0


# --- dead-letter kinds --------------------------------------------------------------------------------------
def test_null_value_is_schema():
    assert kind_of(None) == "schema"


def test_too_large_boundary():
    data = raw(dict(BASE, properties={"pad": "x" * 200}))
    assert parse_event(data, max_bytes=len(data)).properties["pad"]
    assert kind_of(data, max_bytes=len(data) - 1) == "too_large"


def test_too_large_is_checked_before_decoding():
    assert kind_of(b"\xff" * 50, max_bytes=10) == "too_large"


@pytest.mark.parametrize("data", [b"\xff\xfe{}", b'{"user_id": "\xc3"}', "é".encode("latin-1")])
def test_not_utf8(data):
    assert kind_of(data) == "not_utf8"


@pytest.mark.parametrize("data", [b"", b"{", b"{'a': 1}", b"nope", b'{"a": 1} trailing', b"[" * 100_000])
def test_not_json(data):
    assert kind_of(data, max_bytes=1_000_000) == "not_json"


def test_integer_over_python_digit_limit_is_not_json_not_a_crash():
    # json.loads raises a plain ValueError (not JSONDecodeError) for integers over 4300 digits.
    data = raw(BASE)[:-1] + b', "value": 1' + b"0" * 5000 + b"}"
    assert kind_of(data, max_bytes=1_000_000) == "not_json"


def test_huge_integer_timestamp_is_rejected_not_an_overflow():
    # Beyond 64 bits: the parser refuses it (an uncaught OverflowError would crash the agent).
    data = json.dumps(dict(BASE, timestamp=0)).replace('"timestamp": 0', '"timestamp": 1' + "0" * 400).encode()
    assert kind_of(data) in ("not_json", "schema")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_not_json(literal):
    # Python's json module accepts these extensions; RFC 8259 JSON (and our parser) does not.
    data = json.dumps(dict(BASE, timestamp=0)).replace('"timestamp": 0', f'"timestamp": {literal}').encode()
    with pytest.raises(InvalidEvent) as info:
        parse_event(data)
    assert info.value.kind == "not_json"


@pytest.mark.parametrize("obj, field", [
    ({k: v for k, v in BASE.items() if k != "user_id"}, "user_id"),
    (dict(BASE, item_id=7), "item_id"),
    (dict(BASE, event_type="like"), "event_type"),
    (dict(BASE, event_type="rating"), "value"),
    (dict(BASE, timestamp=-1), "timestamp"),
    (dict(BASE, extra=1), "extra"),
    (dict(BASE, schema_version=2), "schema_version"),
])
def test_schema_reason_names_the_field(obj, field):
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw(obj))
    assert info.value.kind == "schema"
    assert field in info.value.reason


# --- the hand validator agrees with the JSON Schema ---------------------------------------------------------
def corpus() -> list:
    out: list = [copy.deepcopy(BASE)]
    for t in EVENT_TYPES:
        out.append(dict(BASE, event_type=t, value=5))
        out.append({k: v for k, v in dict(BASE, event_type=t).items()})          # rating without value: bad
    for name in ("schema_version", "event_id", "user_id", "item_id", "event_type", "timestamp"):
        out.append({k: v for k, v in BASE.items() if k != name})                # each required field missing
    bad_types = [None, True, False, 0, 1.5, "x", [], {}, ["view"]]
    for name in ("event_id", "user_id", "item_id"):
        for v in bad_types + ["", "a", "a" * MAX_ID_LEN, "a" * (MAX_ID_LEN + 1), "é" * MAX_ID_LEN, "\U0001F600"]:
            out.append(dict(BASE, **{name: v}))
    for v in bad_types + ["VIEW", "", "rating "] + list(EVENT_TYPES):
        out.append(dict(BASE, event_type=v, value=1))
    for v in [None, True, "1", 0, 2, 1.0, -1, 1.5, [1]]:
        out.append(dict(BASE, schema_version=v))
    for v in bad_types + [0, 0.0, -0.001, -1, 1e11, 1e11 + 1, 100_000_000_000, 100_000_000_001, 10 ** 400,
                          1_700_000_000.123]:
        out.append(dict(BASE, timestamp=v))
    for v in bad_types + [0, 0.0, 10, 10.0, 10.0001, -0.5, 11, 10 ** 30, 7.25]:
        out.append(dict(BASE, event_type="rating", value=v))
        out.append(dict(BASE, event_type="click", value=v))
    many = {f"k{i}": i for i in range(MAX_PROPERTIES + 1)}
    for v in [None, [], "x", 1, {}, {"a": {"b": [1, None]}}, dict(list(many.items())[:MAX_PROPERTIES]), many]:
        out.append(dict(BASE, properties=v))
    for extra in ({"extra": 1}, {"Event_id": "x"}, {"": None}):
        out.append(dict(BASE, **extra))
    out += [None, [], [BASE], "event", 3, 1.5, True]
    return out


def hand_accepts(obj) -> bool:
    try:
        validate_event(obj)
        return True
    except InvalidEvent as exc:
        assert exc.kind == "schema"
        return False


def test_corpus_is_not_trivial():
    schema = validator("interaction.schema.json")
    verdicts = [schema.is_valid(o) for o in corpus()]
    assert sum(verdicts) >= 20 and verdicts.count(False) >= 100


@pytest.mark.parametrize("index", range(len(corpus())))
def test_hand_validator_agrees_with_json_schema(index):
    obj = corpus()[index]
    expected = validator("interaction.schema.json").is_valid(obj)
    assert hand_accepts(obj) == expected, obj
    # and the full byte path agrees too (bytes as a producer would send them)
    try:
        parse_event(raw(obj), max_bytes=1 << 20)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == expected, obj
