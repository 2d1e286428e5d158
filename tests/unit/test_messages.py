"""Outgoing messages and item records validate against topics/schemas/*.schema.json (jsonschema)."""

from __future__ import annotations

import base64
import json

import pytest

from streamrec.stream import catalog, messages
from streamrec.events import InvalidEvent, parse_event
from streamrec.scoring import Scored
from streamrec.stream.topics import validator

REC = validator("recommendation.schema.json")
DLQ = validator("dead_letter.schema.json")
ITEM = validator("item.schema.json")


def scored(**kw):
    base = dict(items=[("i1", 0.91234567), ("i2", 0.5), ("i3", 0)], scorer="cooc", version="cooc-1")
    base.update(kw)
    return Scored(**base)


# --- recommendation ----------------------------------------------------------------------------------------
def test_recommendation_validates_and_has_schema_version():
    msg = messages.recommendation("u1", scored(), trigger_event_id="e1", event_timestamp=1.5, now=2.0)
    REC.validate(msg)
    assert msg["schema_version"] == 2
    assert msg["generated_at"] == 2.0 and msg["event_timestamp"] == 1.5 and msg["trigger_event_id"] == "e1"
    assert [(i["item_id"], i["rank"]) for i in msg["items"]] == [("i1", 1), ("i2", 2), ("i3", 3)]
    assert msg["items"][0]["score"] == 0.912346
    assert msg["scorer"] == {"name": "cooc", "version": "cooc-1", "fallback": False}
    assert "redelivered" not in msg


def test_recommendation_reasons_version_2_and_version_1_still_valid():
    msg = messages.recommendation("u1", scored(), trigger_event_id="e1", event_timestamp=1.5, now=2.0,
                                  because={"i1": [{"item_id": "h9", "title": "Nine"}], "i3": [{"item_id": "h2"}]})
    REC.validate(msg)
    assert msg["items"][0]["because"] == [{"item_id": "h9", "title": "Nine"}]
    assert "because" not in msg["items"][1] and msg["items"][2]["because"] == [{"item_id": "h2"}]
    old = messages.recommendation("u1", scored(), trigger_event_id="e1", event_timestamp=1.5, now=2.0)
    old["schema_version"] = 1                       # what workers before version 2 published: still valid
    REC.validate(old)
    from streamrec.tools.tail import format_recommendation
    assert "(because: Nine)" in format_recommendation(msg) and "because" not in format_recommendation(old)


def test_recommendation_fallback_and_redelivered():
    s = scored(fallback=True, fallback_reason="timeout: TimeoutError")
    msg = messages.recommendation("u1", s, trigger_event_id="e1", event_timestamp=1.0, redelivered=True, now=3.0)
    REC.validate(msg)
    assert msg["scorer"]["fallback"] is True and msg["scorer"]["fallback_reason"] == "timeout: TimeoutError"
    assert msg["redelivered"] is True


def test_recommendation_empty_items_and_numpy_like_scores():
    class F:                      # numpy/torch scalars are not JSON-serialisable: the builder makes plain floats
        def __float__(self):
            return 0.25
    msg = messages.recommendation("u", scored(items=[("x", F())]), trigger_event_id="", event_timestamp=0,
                                  now=1)
    REC.validate(msg)
    assert type(msg["items"][0]["score"]) is float
    json.loads(messages.encode(msg))
    REC.validate(messages.recommendation("u", scored(items=[]), trigger_event_id="e", event_timestamp=0))


def test_recommendation_generated_at_defaults_to_now():
    import time
    before = time.time()
    msg = messages.recommendation("u", scored(), trigger_event_id="e", event_timestamp=0)
    assert before <= msg["generated_at"] <= time.time()


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("schema_version"),
    lambda m: m.update(schema_version=3),
    lambda m: m["items"][0].update(rank=0),
    lambda m: m["scorer"].update(extra=1),
    lambda m: m.update(user_id=""),
])
def test_recommendation_schema_is_not_vacuous(mutate):
    msg = messages.recommendation("u1", scored(), trigger_event_id="e1", event_timestamp=1.5, now=2.0)
    mutate(msg)
    assert not REC.is_valid(msg)


def test_encode_is_compact_utf8_json():
    msg = messages.recommendation("ü", scored(items=[("café", 1.0)]), trigger_event_id="e", event_timestamp=0,
                                  now=0)
    data = messages.encode(msg)
    assert isinstance(data, bytes) and "café".encode() in data and b", " not in data
    assert json.loads(data.decode("utf-8")) == msg


# --- dead letter -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, kw", [
    (None, {}), (b"x" * 100, {"max_bytes": 10}), (b"\xff", {}), (b"{", {}), (b"{}", {}),
])
def test_every_invalid_event_kind_makes_a_valid_dead_letter(data, kw):
    with pytest.raises(InvalidEvent) as info:
        parse_event(data, **kw)
    msg = messages.dead_letter(reason=info.value.reason, error=info.value.kind, source_topic="interactions",
                               partition=3, offset=42, key=b"u1", value=data, now=5.0)
    DLQ.validate(msg)
    assert msg["schema_version"] == 1 and msg["error"] == info.value.kind
    assert base64.b64decode(msg["original_value_b64"]) == (data or b"")
    assert base64.b64decode(msg["original_key_b64"]) == b"u1"


def test_dead_letter_without_key_partition_offset():
    msg = messages.dead_letter(reason="boom", error="processing", source_topic="t", partition=None, offset=None,
                               key=None, value=b"\x00\xff")
    DLQ.validate(msg)
    assert msg["original_key_b64"] is None and msg["source_partition"] is None
    assert base64.b64decode(msg["original_value_b64"]) == b"\x00\xff"
    assert isinstance(msg["received_at"], float)


def test_dead_letter_schema_is_not_vacuous():
    msg = messages.dead_letter(reason="r", error="nope", source_topic="t", partition=0, offset=0, key=None,
                               value=b"")
    assert not DLQ.is_valid(msg)


# --- item records (catalog.validate_item agrees with item.schema.json) -------------------------------------
GOOD_ITEM = {"schema_version": 1, "item_id": "i1", "title": "A title"}


def item_corpus() -> list:
    out: list = [dict(GOOD_ITEM), catalog.item_record("i2", "T", categories=["a", "b"], available=False,
                                                      description="d", updated_at=1.5)]
    for name in ("schema_version", "item_id", "title"):
        out.append({k: v for k, v in GOOD_ITEM.items() if k != name})
    for v in [0, 2, True, "1", None, 1.0]:
        out.append(dict(GOOD_ITEM, schema_version=v))
    for v in ["", "x" * 128, "x" * 129, 5, None]:
        out.append(dict(GOOD_ITEM, item_id=v))
    for v in ["", "t" * 1000, "t" * 1001, [], None]:
        out.append(dict(GOOD_ITEM, title=v))
    for v in ["", "d" * 10000, "d" * 10001, 3, None]:
        out.append(dict(GOOD_ITEM, description=v))
    for v in [[], ["a"], ["c"] * 50, ["c"] * 51, ["x" * 200], ["x" * 201], [1], "a", None, {}]:
        out.append(dict(GOOD_ITEM, categories=v))
    for v in [True, False, 1, 0, "true", None]:
        out.append(dict(GOOD_ITEM, available=v))
    for v in [0, 1.5, 1_700_000_000, -1, -0.5, True, "1", None]:
        out.append(dict(GOOD_ITEM, updated_at=v))
    out += [dict(GOOD_ITEM, price=3), None, [], "item", 1]
    return out


def hand_accepts_item(record) -> bool:
    try:
        assert catalog.validate_item(record) is record
        return True
    except ValueError:
        return False


def test_item_corpus_is_not_trivial():
    verdicts = [ITEM.is_valid(r) for r in item_corpus()]
    assert sum(verdicts) >= 15 and verdicts.count(False) >= 25


@pytest.mark.parametrize("index", range(len(item_corpus())))
def test_validate_item_agrees_with_json_schema(index):
    record = item_corpus()[index]
    assert hand_accepts_item(record) == ITEM.is_valid(record), record


def test_item_record_and_item_text():
    rec = catalog.item_record("i9", "Boots", categories=["outdoor", "shoes"], description="warm " * 200)
    ITEM.validate(rec)
    text = catalog.item_text(rec)
    assert text.startswith("Boots. outdoor, shoes. warm")
    assert len(text) <= len("Boots. outdoor, shoes. ") + 500
    assert catalog.item_text(None) == "" and catalog.item_text({"title": "T"}) == "T"


def test_oversized_original_is_cut_to_the_limit_and_says_so():
    big = b"x" * 5000
    msg = messages.dead_letter(reason="too big", error="too_large", source_topic="interactions", partition=2,
                               offset=7, key=b"u1", value=big, max_value_bytes=1024)
    validator("dead_letter.schema.json").validate(msg)
    assert base64.b64decode(msg["original_value_b64"]) == big[:1024]
    assert msg["truncated"] is True and msg["original_size"] == 5000
    small = messages.dead_letter(reason="bad", error="schema", source_topic="interactions", partition=2,
                                 offset=8, key=b"u1", value=b"{}", max_value_bytes=1024)
    assert base64.b64decode(small["original_value_b64"]) == b"{}" and "truncated" not in small
