"""The worker's per-batch logic driven directly: fake events, a dict for the user_state table, a list for Kafka."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import count

import orjson
import pytest

from streamrec.config import Settings
from streamrec.scoring import CooccurrenceScorer, Scored
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.state import decode_state, encode_state
from streamrec.stream.topics import validator

REC = validator("recommendation.schema.json")
DLQ = validator("dead_letter.schema.json")
_offsets = count()


@dataclass
class Msg:
    key: bytes | None
    value: bytes | None
    topic: str = "interactions"
    partition: int = 0
    offset: int = 0


@dataclass
class Ev:
    message: Msg


def ev(user: str, item: str, ts: float = 1.0, eid: str | None = None, key: str | None = None) -> Ev:
    body = {"schema_version": 1, "event_id": eid or f"{user}-{item}-{ts}", "user_id": user, "item_id": item,
            "event_type": "view", "timestamp": ts}
    return Ev(Msg((key if key is not None else user).encode(), orjson.dumps(body), offset=next(_offsets)))


def raw(value: bytes, key: bytes | None = b"u1", topic: str = "interactions") -> Ev:
    return Ev(Msg(key, value, topic=topic, offset=next(_offsets)))


class DictStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.gets = self.puts = 0
        self.tombstones: list[bytes] = []

    def get(self, key, event=None):
        self.gets += 1
        return self.data.get(key)

    def put(self, key, value, event):
        self.puts += 1
        self.data[key] = value

    def delete(self, key, event):
        self.tombstones.append(key)   # what Faust writes to the changelog, present key or not
        self.data.pop(key, None)


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, dict]] = []

    async def send(self, topic, key, value):
        self.sent.append((topic, key, orjson.loads(value)))

    def on(self, topic: str) -> list[tuple[bytes | None, dict]]:
        return [(k, v) for t, k, v in self.sent if t == topic]


class CountingScorer(CooccurrenceScorer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def score(self, requests):
        self.calls.append(len(requests))
        return super().score(requests)


def make(scorer=None, **settings) -> tuple[Pipeline, DictStore, ListSink]:
    store, sink = DictStore(), ListSink()
    return Pipeline(Settings(**settings), scorer or CooccurrenceScorer(), store, sink), store, sink


def run(coro):
    return asyncio.run(coro)


def test_valid_events_update_state_and_each_gets_a_schema_valid_recommendation():
    p, store, sink = make(CountingScorer())
    run(p.handle_batch([ev("u1", "a", 1), ev("u2", "b", 2), ev("u1", "c", 3)]))
    recs = sink.on("recommendations")
    assert [k for k, _ in recs] == [b"u1", b"u2", b"u1"]
    for _, msg in recs:
        REC.validate(msg)
    assert [m["trigger_event_id"] for _, m in recs] == ["u1-a-1", "u2-b-2", "u1-c-3"]
    u1 = decode_state(store.data[b"u1"])
    assert [h[0] for h in u1["history"]] == ["a", "c"] and u1["total"] == 2
    # one table write per user per batch, one scorer call for the batch, one request per user (coalesced)
    assert store.puts == 2
    assert p.scorer.calls == [2]
    assert not sink.on("interactions-dlq")


def test_malformed_events_are_dead_lettered_with_the_reason_and_the_rest_goes_on():
    p, store, sink = make()
    run(p.handle_batch([raw(b"{not json"), ev("u1", "a"), raw(b'{"schema_version": 1}'), raw(b"x" * 70_000)]))
    dead = [m for _, m in sink.on("interactions-dlq")]
    assert len(dead) == 3
    for m in dead:
        DLQ.validate(m)
        assert m["reason"]
    assert dead[2].get("truncated") is True
    assert len(sink.on("recommendations")) == 1
    assert decode_state(store.data[b"u1"])["total"] == 1


def test_a_redelivered_event_is_answered_but_applied_once():
    p, store, sink = make()
    run(p.handle_batch([ev("u1", "a", eid="e1")]))
    run(p.handle_batch([ev("u1", "a", eid="e1"), ev("u1", "b", 2, eid="e2")]))
    state = decode_state(store.data[b"u1"])
    assert state["total"] == 2 and [h[0] for h in state["history"]] == ["a", "b"]
    recs = [m for _, m in sink.on("recommendations")]
    assert [m.get("redelivered", False) for m in recs] == [False, True, False]


def test_a_mis_keyed_event_is_re_keyed_by_user_not_applied_here():
    p, store, sink = make()
    run(p.handle_batch([ev("u1", "a", key="someone-else")]))
    assert store.data == {}
    [(key, body)] = sink.on("interactions")
    assert key == b"u1" and body["item_id"] == "a"
    assert not sink.on("recommendations")


def test_seen_and_unavailable_items_are_never_recommended():
    p, _, sink = make()
    history = [ev(f"u{n}", i, t) for n in range(5) for t, i in enumerate(["a", "b", "c", "d"])]
    run(p.handle_batch(history))
    run(p.handle_item(raw(orjson.dumps({"schema_version": 1, "item_id": "c", "title": "C", "available": False}), b"c", "items")))
    sink.sent.clear()
    run(p.handle_batch([ev("new", "a", 10)]))
    [(_, msg)] = sink.on("recommendations")
    got = [i["item_id"] for i in msg["items"]]
    assert got and "a" not in got and "c" not in got


def test_item_records_deletions_and_bad_records():
    p, _, sink = make()
    run(p.handle_item(raw(orjson.dumps({"schema_version": 1, "item_id": "i1", "title": "T"}), b"i1", "items")))
    run(p.handle_item(raw(None, b"i2", "items")))
    run(p.handle_item(raw(b"[1, 2", b"i3", "items")))
    run(p.handle_item(raw(None, None, "items")))
    assert p.catalog["i1"]["title"] == "T"
    assert p.catalog["i2"] == {"item_id": "i2", "deleted": True}
    assert p.unavailable == {"i2"}
    dead = [m for _, m in sink.on("interactions-dlq")]
    assert len(dead) == 2 and all(m["source_topic"] == "items" for m in dead)


def test_lookup_answers_404_for_unknown_users_and_a_recommendation_for_known_ones():
    p, _, _ = make()
    assert run(p.lookup("nobody"))[0] == 404
    run(p.handle_batch([ev("u1", "a"), ev("u2", "a"), ev("u2", "b", 2)]))
    status, body = run(p.lookup("u1"))
    assert status == 200 and body["user_id"] == "u1"
    REC.validate(body)
    assert [i["item_id"] for i in body["items"]] == ["b"]


class Broken:
    name, version = "broken", "0"

    def __init__(self, fallback):
        self.fallback = fallback

    def score(self, requests):
        raise RuntimeError("model exploded")

    def observe(self, history, item):
        self.fallback.observe(history, item)


def test_a_failing_scorer_is_answered_by_its_fallback_and_the_message_says_so():
    p, _, sink = make(Broken(CooccurrenceScorer()))
    run(p.handle_batch([ev("u1", "a")]))
    [(_, msg)] = sink.on("recommendations")
    assert msg["scorer"]["fallback"] is True and "model exploded" in msg["scorer"]["fallback_reason"]


def test_a_scorer_fault_without_fallback_raises_so_the_batch_is_not_committed():
    class Bad(CooccurrenceScorer):
        def score(self, requests):
            raise RuntimeError("bug")

    p, _, sink = make(Bad())
    with pytest.raises(RuntimeError):
        run(p.handle_batch([ev("u1", "a")]))
    assert not sink.on("interactions-dlq")


def test_learn_histories_warms_the_scorer():
    p, _, _ = make()
    states = [encode_state({"history": [["a", "view", 1], ["b", "view", 2]], "counts": {}, "total": 2,
                            "first_seen": 1, "last_seen": 2, "recent_event_ids": []})] * 3
    assert p.learn_histories(states) == 3
    [answer] = p.scorer.score([p.request("x", decode_state(states[0]) | {"history": [["a", "view", 1]]})])
    assert isinstance(answer, Scored) and answer.items[0][0] == "b"


def erase(user: str, key: str | None = None, request_id: str = "req-1") -> Ev:
    body = {"schema_version": 1, "request_id": request_id, "user_id": user, "requested_at": 1.0}
    return raw(orjson.dumps(body), key=(key if key is not None else user).encode(), topic="user-erasure")


def test_erasure_deletes_the_users_state_and_later_events_start_afresh():
    p, store, sink = make()
    run(p.handle_batch([ev("u1", "a", 1), ev("u2", "b", 2), ev("u1", "c", 3)]))
    assert run(p.lookup("u1"))[0] == 200
    run(p.handle_batch([ev("u1", "d", 4), erase("u1"), ev("u2", "e", 5)]))
    assert b"u1" not in store.data and store.tombstones == [b"u1"]
    assert run(p.lookup("u1"))[0] == 404
    assert decode_state(store.data[b"u2"])["total"] == 2            # nobody else touched
    # The same request again (at-least-once redelivery): still gone, the tombstone written again.
    run(p.handle_batch([erase("u1")]))
    assert store.tombstones == [b"u1", b"u1"] and run(p.lookup("u1"))[0] == 404
    # Acting again starts a new state, also within the batch of the erasure: nothing from before comes back.
    run(p.handle_batch([ev("u2", "f", 6), erase("u2"), ev("u2", "g", 7)]))
    u2 = decode_state(store.data[b"u2"])
    assert u2["total"] == 1 and [h[0] for h in u2["history"]] == ["g"]
    assert not sink.on("interactions-dlq")


def test_bad_erase_requests_are_dead_lettered_and_mis_keyed_ones_re_keyed():
    p, store, sink = make()
    run(p.handle_batch([ev("u1", "a", 1)]))
    bad = [raw(b"{nope", key=b"u1", topic="user-erasure"),
           raw(orjson.dumps({"schema_version": 1, "user_id": "u1"}), key=b"u1", topic="user-erasure"),
           raw(None, key=b"u1", topic="user-erasure")]
    run(p.handle_batch(bad + [erase("u1", key="elsewhere")]))
    dead = [m for _, m in sink.on("interactions-dlq")]
    assert [m["error"] for m in dead] == ["not_json", "schema", "schema"]
    assert all(m["source_topic"] == "user-erasure" for m in dead)
    assert b"u1" in store.data and not store.tombstones                # nothing erased by a bad or stray request
    [(key, body)] = sink.on("user-erasure")
    assert key == b"u1" and body["user_id"] == "u1"
