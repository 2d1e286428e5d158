"""The worker's per-batch logic driven directly: fake events, a dict for the user_state table, a list for Kafka."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import count

import orjson
import pytest

from streamrec.config import Settings
from streamrec.scoring import CooccurrenceScorer
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.state import STATE_VERSION, StateError, decode_state, encode_state
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


class FailingStore(DictStore):
    def get(self, key, event=None):
        raise OSError("rocksdb: IO error: read failed")


@pytest.mark.parametrize("fault", ["store", "state"])
def test_a_store_or_state_fault_raises_and_dead_letters_nothing(fault):
    """The worker's own store or state failing is not bad input: handle_batch raises (the agent then exits
    before the commit) and the valid events are neither dead-lettered nor answered."""
    sink = ListSink()
    store = FailingStore() if fault == "store" else DictStore()
    if fault == "state":
        store.data[b"u1"] = b'{"history": [["a", "vie'    # a torn write / foreign bytes
    p = Pipeline(Settings(), CooccurrenceScorer(), store, sink)
    with pytest.raises(OSError if fault == "store" else StateError):
        run(p.handle_batch([ev("u2", "b"), ev("u1", "a"), ev("u3", "c")]))
    assert not sink.on("interactions-dlq")
    assert not sink.on("recommendations")


def test_an_old_format_state_is_migrated_and_applied_on():
    p, store, sink = make()
    store.data[b"u1"] = orjson.dumps({"history": [["a", "view", 1.0]], "counts": {"view": 1}, "total": 1,
                                      "first_seen": 1.0, "last_seen": 1.0, "recent_event_ids": ["e0"]})
    run(p.handle_batch([ev("u1", "b", 2.0, eid="e1")]))
    state = decode_state(store.data[b"u1"])
    assert state["v"] == STATE_VERSION and state["total"] == 2 and [h[0] for h in state["history"]] == ["a", "b"]
    assert orjson.loads(store.data[b"u1"])["v"] == STATE_VERSION   # written back in the current format
    assert not sink.on("interactions-dlq")


class ObserveCounter(CooccurrenceScorer):
    def __init__(self) -> None:
        super().__init__()
        self.observed: list[str] = []

    def observe(self, history, item_id):
        self.observed.append(item_id)
        super().observe(history, item_id)


def stored(*items: str, total: int | None = None) -> bytes:
    return encode_state({"history": [[it, "view", n] for n, it in enumerate(items)], "counts": {},
                         "total": len(items) if total is None else total, "first_seen": 0, "last_seen": len(items),
                         "recent_event_ids": []})


def test_partitions_gained_at_a_later_assignment_warm_the_scorer_and_none_is_replayed_twice():
    scorer = ObserveCounter()
    p, _, _ = make(scorer)
    table = {0: [(b"u0", stored("a", "b"))], 1: [(b"u1", stored("c", "d")), (b"u2", stored("c", "d"))],
             2: [(b"u3", stored("x", "y"))], 3: []}
    reads: list[int] = []

    def read(partition):
        reads.append(partition)
        return table[partition]

    assert run(p.warm_partitions({0, 1}, read)) == 3          # the first assignment
    assert run(p.warm_partitions({0, 1, 2, 3}, read)) == 1    # a later one: only what was gained is replayed
    assert reads == [0, 1, 2, 3] and p.warmed == {0, 1, 2, 3}
    assert sorted(scorer.observed) == ["a", "b", "c", "c", "d", "d", "x", "y"]   # each stored event once
    [answer] = scorer.score([p.request("new", decode_state(stored("x")))])
    assert answer.items[0][0] == "y"                          # learned from the partition gained later


def test_a_partition_lost_and_gained_back_teaches_only_what_was_applied_elsewhere_meanwhile():
    scorer = ObserveCounter()
    p, _, _ = make(scorer)
    table = {0: [(b"u0", stored("a", "b")), (b"u1", stored("c"))]}
    run(p.warm_partitions({0}, table.get))
    run(p.forget_partitions({0}, table.get))                  # revoked: u0 had 2 events, u1 had 1
    assert p.warmed == set()
    # meanwhile another worker applied u0: e, u1: f, g, and a new user u2: h, i (its histories grew)
    table[0] = [(b"u0", stored("a", "b", "e")), (b"u1", stored("c", "f", "g")), (b"u2", stored("h", "i"))]
    scorer.observed.clear()
    assert run(p.warm_partitions({0}, table.get)) == 3
    assert sorted(scorer.observed) == ["e", "f", "g", "h", "i"]
    # a history cut to history_size: total says 10 events, 3 stored, 2 taught before -> the 3 stored are new
    run(p.forget_partitions({0}, lambda _: [(b"u9", stored("z", total=2))]))
    scorer.observed.clear()
    run(p.warm_partitions({0}, lambda _: [(b"u9", stored("p", "q", "r", total=10))]))
    assert scorer.observed == ["p", "q", "r"]


def test_warming_a_partition_with_an_unreadable_state_raises():
    p, _, _ = make()
    with pytest.raises(StateError):
        run(p.warm_partitions({0}, lambda _: [(b"u", b"\x00garbage")]))
    assert p.warmed == set()


def test_recommend_seen_lets_history_items_come_back_but_never_unavailable_ones():
    events = [ev(f"u{n}", i, t) for n in range(5) for t, i in enumerate(["a", "b", "c"])]
    p, _, sink = make(recommend_seen=True)
    run(p.handle_batch(events))
    run(p.handle_item(raw(orjson.dumps({"schema_version": 1, "item_id": "c", "title": "C", "available": False}),
                          b"c", "items")))
    sink.sent.clear()
    run(p.handle_batch([ev("u0", "a", 10)]))
    got = [i["item_id"] for _, m in sink.on("recommendations") for i in m["items"]]
    assert "b" in got and "c" not in got          # b was seen by u0 (allowed now); c is unavailable


def test_each_recommended_item_names_a_history_item_of_the_user_with_its_title():
    p, _, sink = make()
    run(p.handle_item(raw(orjson.dumps({"schema_version": 1, "item_id": "a", "title": "Alpha"}), b"a", "items")))
    # some users walk a -> b, others x -> y: u's recommendation of b is explained by a, of y by x
    run(p.handle_batch([ev(f"w{n}", i, t) for n in range(5) for t, i in enumerate(["a", "b"])]
                       + [ev(f"v{n}", i, t) for n in range(5) for t, i in enumerate(["x", "y"])]))
    sink.sent.clear()
    run(p.handle_batch([ev("u", "a", 1), ev("u", "x", 2)]))
    msg = sink.on("recommendations")[-1][1]
    REC.validate(msg)
    reasons = {i["item_id"]: i.get("because") for i in msg["items"]}
    assert reasons["b"] == [{"item_id": "a", "title": "Alpha"}]
    assert reasons["y"] == [{"item_id": "x"}]
    for why in filter(None, reasons.values()):
        assert why[0]["item_id"] in {"a", "x"}         # always an item of this user's history
    status, body = run(p.lookup("u"))                   # lookups over HTTP carry the same reasons
    assert status == 200 and {i["item_id"]: i.get("because") for i in body["items"]}["b"] == reasons["b"]


def test_explain_off_leaves_items_bare():
    p, _, sink = make(explain=False)
    run(p.handle_batch([ev(f"w{n}", i, t) for n in range(3) for t, i in enumerate(["a", "b"])] + [ev("u", "a", 9)]))
    assert all("because" not in i for _, m in sink.on("recommendations") for i in m["items"])


class CountingCatalog(dict):
    """A catalog table whose len() is counted: on a RocksDB table it reads every key."""

    lens = 0

    def __len__(self):
        CountingCatalog.lens += 1
        return super().__len__()


def test_catalog_size_is_counted_incrementally_not_by_scanning_the_table():
    from streamrec import metrics
    catalog = CountingCatalog({"old": {"item_id": "old"}})
    p = Pipeline(Settings(), CooccurrenceScorer(), DictStore(), ListSink(), catalog)
    CountingCatalog.lens = 0
    for i in range(50):
        run(p.handle_item(raw(orjson.dumps({"schema_version": 1, "item_id": f"i{i}", "title": "T"}), f"i{i}".encode(), "items")))
    run(p.handle_item(raw(orjson.dumps({"schema_version": 1, "item_id": "i3", "title": "T2"}), b"i3", "items")))
    run(p.handle_item(raw(None, b"old", "items")))   # a deletion stays as a marker record: still one row
    assert CountingCatalog.lens <= 1
    assert metrics.CATALOG_ITEMS._value.get() == dict.__len__(catalog) == 51


def test_requests_share_the_unavailable_set_instead_of_copying_it():
    p, store, _ = make()
    for i in range(1000):
        p.apply_item(f"gone{i}", None)
    run(p.handle_batch([ev("u1", "a", 1), ev("u1", "b", 2)]))
    r1, r2 = p.request("u1", decode_state(store.data[b"u1"])), p.request("u2", {"history": [], "total": 0})
    assert r1.exclude.unavailable is r2.exclude.unavailable           # one shared copy, not one per request
    assert "a" in r1.exclude and "gone5" in r1.exclude and "gone5" in r2.exclude and "a" not in r2.exclude
    assert len(r1.exclude) == 1002 and set(r1.exclude) == {"a", "b"} | {f"gone{i}" for i in range(1000)}
    p.apply_item("gone5", {"item_id": "gone5", "title": "back"})      # available again
    r3 = p.request("u1", decode_state(store.data[b"u1"]))
    assert "gone5" not in r3.exclude and "gone5" in r1.exclude       # a request keeps the view it was made with


def test_event_to_recommendation_latency_is_measured_from_the_record_timestamp():
    import time
    from streamrec import metrics

    def total():
        [family] = [m for m in metrics.REGISTRY.collect() if m.name == "streamrec_event_to_recommendation_seconds"]
        got = {s.name.rsplit("_", 1)[-1]: s.value for s in family.samples if not s.labels.get("le")}
        return got["count"], got["sum"]

    p, _, _ = make()
    e = ev("u1", "a", 1)
    e.message.timestamp = time.time() - 2.0   # produced two seconds ago
    count, seconds = total()
    run(p.handle_batch([e, ev("u1", "b", 2)]))   # the second has no record timestamp: not observed
    count2, seconds2 = total()
    assert count2 - count == 1 and 2.0 <= seconds2 - seconds < 10


def test_consumer_lag_per_assigned_partition_of_the_interactions_topic():
    from types import SimpleNamespace as NS
    from streamrec import metrics
    from streamrec.stream.adapters import consumer_lags
    from collections import namedtuple
    tp = namedtuple("TP", "topic partition")
    a0, a1, a2, other = tp("interactions", 0), tp("interactions", 1), tp("interactions", 2), tp("items", 0)
    consumer = NS(assignment=lambda: {a0, a1, a2, other}, highwater={a0: 100, a1: 50, a2: None, other: 9}.get,
                  _committed_offset={a0: 40}, _read_offset={a1: 44})
    lags = consumer_lags(consumer, "interactions")
    assert lags == {("interactions", 0): 60, ("interactions", 1): 5}
    metrics.set_consumer_lag(lags)
    metrics.set_consumer_lag({("interactions", 1): 7})   # partition 0 moved away: its gauge goes
    text = metrics.render().decode()
    assert 'streamrec_consumer_lag{partition="1",topic="interactions"} 7.0' in text
    assert 'partition="0"' not in text.split("streamrec_consumer_lag", 1)[1]


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
