"""The pipeline end to end on a real broker: events in -> recommendations out, bad input -> dead letters,
redeliveries applied once, state surviving restarts (from RocksDB and from the changelog alone)."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time

import pytest

from streamrec.stream import topics

from .conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T0 = 1_700_000_000.0


def warmup_events() -> list:
    """Users who all go a -> b -> c, so co-occurrence has something to say about a newcomer who views a."""
    return [event(f"w{u}", item, T0 + 10 * u + i) for u in range(8) for i, item in enumerate("abc")]


def test_events_to_recommendations(stack):
    recs_schema = topics.validator("recommendation.schema.json")
    stack.worker()
    warm = warmup_events()
    probe = [event("alice", "a", T0 + 1000), event("bob", "b", T0 + 1001), event("alice", "b", T0 + 1002)]
    stack.produce_events(warm + probe)

    want = {e.event_id for e in warm + probe}
    records = stack.consume(stack.topic("recommendations"),
                            lambda rs: want <= {m["trigger_event_id"] for _, m in rs})
    by_trigger = {m["trigger_event_id"]: (k, m) for k, m in records}
    assert len(records) == len(want), "exactly one recommendation per applied event"
    for e in warm + probe:
        key, msg = by_trigger[e.event_id]
        recs_schema.validate(msg)
        assert key == e.user_id.encode() and msg["user_id"] == e.user_id
        assert msg["event_timestamp"] == e.timestamp
        assert msg["scorer"]["name"] == "cooc" and msg["scorer"]["fallback"] is False
        assert [it["rank"] for it in msg["items"]] == list(range(1, len(msg["items"]) + 1))
        scores = [it["score"] for it in msg["items"]]
        assert scores == sorted(scores, reverse=True)

    # alice has seen a and b: never recommended again; c is what everyone viewed after a and b.
    _, last_alice = by_trigger[probe[2].event_id]
    items = [it["item_id"] for it in last_alice["items"]]
    assert not {"a", "b"} & set(items)
    assert items[0] == "c"
    _, bob = by_trigger[probe[1].event_id]
    bob_items = [it["item_id"] for it in bob["items"]]
    assert set(bob_items[:2]) == {"a", "c"} and "b" not in bob_items   # b's neighbours, never b itself


def test_malformed_events_go_to_dead_letter_and_worker_keeps_running(stack):
    dlq_schema = topics.validator("dead_letter.schema.json")
    worker = stack.worker()
    good = event("carol", "x", T0)
    bad = {
        "not_json": b"{this is not json",
        "not_utf8": b"\xff\xfe\x00garbage",
        "missing": json.dumps({"schema_version": 1, "event_id": "m1", "user_id": "carol", "event_type": "view",
                               "timestamp": T0}).encode(),
        "bad_type": json.dumps({**good.to_json(), "event_id": "t1", "event_type": "teleport"}).encode(),
        "ill_typed": json.dumps({**good.to_json(), "event_id": "t2", "timestamp": "yesterday"}).encode(),
        "too_large": json.dumps({**good.to_json(), "event_id": "t3",
                                 "properties": {"blob": "z" * 20_000}}).encode(),
        "array": b"[1, 2, 3]",
        "null": None,
    }
    stack.produce(stack.topic("interactions"), [(b"carol", v) for v in bad.values()] + [(b"carol", good.to_bytes())])

    dead = stack.consume(stack.topic("interactions-dlq"), lambda rs: len(rs) >= len(bad))
    assert len(dead) == len(bad)
    originals = {base64.b64decode(m["original_value_b64"]): m for _, m in dead}
    # The oversized event is copied only up to the size limit (a dead letter must fit in a Kafka message).
    [big] = [m for _, m in dead if m.get("truncated")]
    assert big["original_size"] == len(bad["too_large"]) and big["error"] == "too_large"
    assert bad["too_large"].startswith(base64.b64decode(big["original_value_b64"]))
    originals[bad["too_large"]] = big
    for name, value in bad.items():
        msg = originals[value or b""]
        dlq_schema.validate(msg)
        assert msg["reason"], name
        assert msg["source_topic"] == stack.topic("interactions")
        assert base64.b64decode(msg["original_key_b64"]) == b"carol"
    errors = {name: originals[v or b""]["error"] for name, v in bad.items()}
    assert errors["not_json"] == "not_json" and errors["not_utf8"] == "not_utf8"
    assert errors["too_large"] == "too_large" and errors["missing"] == "schema"
    assert "item_id" in originals[bad["missing"]]["reason"]
    assert "teleport" in originals[bad["bad_type"]]["reason"]

    # The valid event behind them is still processed: the worker did not crash or stall.
    stack.consume(stack.topic("recommendations"), lambda rs: any(m["trigger_event_id"] == good.event_id for _, m in rs))
    worker.assert_alive()
    status, body = worker.get("/ready")
    assert status == 200, body


def test_redelivered_event_is_applied_once(stack):
    stack.worker()
    first = event("dave", "p", T0, n=1)
    second = event("dave", "q", T0 + 1, n=2)
    stack.produce_events([first, first, second, first])   # a producer retry and a late redelivery

    recs = stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= 4)
    flags = [(m["trigger_event_id"], bool(m.get("redelivered"))) for _, m in recs]
    assert flags == [(first.event_id, False), (first.event_id, True), (second.event_id, False),
                     (first.event_id, True)]
    state = stack.changelog_state("dave", until=lambda s: s["total"] >= 2)
    assert state["total"] == 2
    assert [h[0] for h in state["history"]] == ["p", "q"]
    assert state["counts"] == {"view": 2}


def test_rekeys_events_produced_under_another_key(stack):
    stack.worker()
    e = event("erin", "k", T0)
    stack.produce(stack.topic("interactions"), [(b"wrong-key", e.to_bytes())])
    [(key, msg)] = stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= 1)
    assert key == b"erin" and msg["trigger_event_id"] == e.event_id
    assert stack.changelog_state("erin")["total"] == 1


def test_state_survives_restart_from_rocksdb_and_from_changelog(stack):
    user = "frank"
    history = ["i1", "i2", "i3"]
    worker = stack.worker()
    stack.produce_events([event(user, it, T0 + n) for n, it in enumerate(history)])
    stack.changelog_state(user, until=lambda s: s["total"] == 3)
    assert worker.stop() == 0

    # 1. Restart on the same data dir: state comes from RocksDB (plus the changelog tail).
    worker = stack.worker()
    history.append("i4")
    stack.produce_events([event(user, "i4", T0 + 10)])
    state = stack.changelog_state(user, until=lambda s: s["total"] >= 4)
    assert state["total"] == 4 and [h[0] for h in state["history"]] == history
    recs = stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= 4)
    assert not {it["item_id"] for it in recs[-1][1]["items"]} & set(history)
    assert worker.stop() == 0

    # 2. Local state deleted (a new machine): the table is rebuilt from the changelog topic.
    shutil.rmtree(stack.settings.data_dir)
    worker = stack.worker()
    history.append("i5")
    stack.produce_events([event(user, "i5", T0 + 20)])
    state = stack.changelog_state(user, until=lambda s: s["total"] >= 5)
    assert state["total"] == 5 and [h[0] for h in state["history"]] == history
    # The events from before the restarts were not applied again.
    recs = stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= 5)
    assert sorted(m["trigger_event_id"] for _, m in recs) == sorted(
        f"{user}-{it}-{int(T0 + t)}" for it, t in zip(history, [0, 1, 2, 10, 20]))


def test_topics_apply_creates_missing_and_reports_drift(bootstrap, tmp_path, monkeypatch, capsys):
    from kafka.admin import NewTopic

    from streamrec.cli import main

    from .conftest import Stack
    s = Stack(bootstrap, tmp_path)          # fresh names: nothing exists yet
    for k, v in s.env.items():
        if k.startswith("STREAMREC_"):
            monkeypatch.setenv(k, v)
    admin = topics.admin_client(s.settings)
    try:   # someone created two topics by hand, wrongly
        admin.create_topics([NewTopic(s.topic("interactions"), 2, 1),
                             NewTopic(s.topic("recommendations"), 4, 1, topic_configs={"retention.ms": "1000"})])
    finally:
        admin.close()

    assert main(["topics", "check"]) == 1
    out = capsys.readouterr().out
    assert f"DRIFT    {s.topic('items')}: missing" in out

    assert main(["topics", "apply"]) == 1
    out = capsys.readouterr().out
    assert f"created  {s.topic('items')}" in out and f"created  {s.topic('interactions-dlq')}" in out
    assert f"DRIFT    {s.topic('interactions')}: partitions 2, declared 4" in out
    assert f"DRIFT    {s.topic('recommendations')}: retention.ms=1000, declared 86400000" in out

    assert main(["topics", "apply"]) == 1            # idempotent: nothing more to create, same drift
    out = capsys.readouterr().out
    assert "created" not in out and out.count("DRIFT") == 2
    assert f"ok       {s.topic('items')}" in out


def test_unavailable_and_deleted_items_are_never_recommended_even_after_restart(stack):
    from streamrec.stream.catalog import item_record
    from streamrec.stream.messages import encode
    items = stack.topic("items")
    stack.produce(items, [(i.encode(), encode(item_record(i, f"title {i}"))) for i in "abcde"])
    stack.produce(items, [(b"c", encode(item_record("c", "title c", available=False))), (b"d", None)])
    worker = stack.worker()
    # Everyone goes a -> b -> c -> d -> e: c and d would be the strongest neighbours of b.
    stack.produce_events([event(f"w{u}", it, T0 + 10 * u + n) for u in range(6) for n, it in enumerate("abcde")])
    stack.produce_events([event("gina", "b", T0 + 500)])
    recs = stack.consume(stack.topic("recommendations"),
                         lambda rs: any(m["user_id"] == "gina" for _, m in rs), timeout=90)
    gina = [m for _, m in recs if m["user_id"] == "gina"][-1]
    got = [it["item_id"] for it in gina["items"]]
    assert got and not {"c", "d", "b"} & set(got), got

    assert worker.stop() == 0
    stack.worker()                     # a restarted worker must still know c and d are out
    stack.produce_events([event("hank", "b", T0 + 600)])
    recs = stack.consume(stack.topic("recommendations"),
                         lambda rs: any(m["user_id"] == "hank" for _, m in rs), timeout=90)
    hank = [m for _, m in recs if m["user_id"] == "hank"][-1]
    got = [it["item_id"] for it in hank["items"]]
    assert got and not {"c", "d", "b"} & set(got), got


def test_hard_crash_mid_stream_loses_nothing_and_applies_nothing_twice(stack):
    users = [f"k{u:03d}" for u in range(100)]
    n_each = 60
    evs = [event(u, f"i{n}", T0 + 100 * n + k, n=n) for n in range(n_each) for k, u in enumerate(users)]
    worker = stack.worker()

    def trickle():   # a steady stream, so that the kill lands among processed-but-uncommitted events
        for i in range(0, len(evs), 200):
            stack.produce_events(evs[i:i + 200])
            time.sleep(0.1)

    producer = threading.Thread(target=trickle)
    producer.start()
    recs_topic = stack.topic("recommendations")
    stack.consume(recs_topic, lambda rs: len(rs) >= 1500)
    assert worker.kill() != 0                  # SIGKILL part-way: offsets, producer buffer, RocksDB all cut short
    producer.join()

    stack.worker()
    want = {e.event_id for e in evs}
    recs = stack.consume(recs_topic, lambda rs: want <= {m["trigger_event_id"] for _, m in rs}, timeout=180)
    assert want <= {m["trigger_event_id"] for _, m in recs}            # every event answered at least once
    # Every user's state, as the changelog holds it (what any worker rebuilds from): each event exactly once.
    states = stack.changelog_states(lambda st: len(st) == len(users) and all(
        s["total"] >= n_each for s in st.values()), timeout=120)
    for u in users:
        assert states[u]["total"] == n_each and states[u]["counts"] == {"view": n_each}, (u, states[u]["total"])
        assert [h[0] for h in states[u]["history"]] == [f"i{n}" for n in range(n_each)][-50:]


def test_catalog_changes_reach_the_worker_that_does_not_own_the_items_partition(stack):
    from streamrec.stream.catalog import item_record
    from streamrec.stream.messages import encode
    items = stack.topic("items")
    stack.produce(items, [(i.encode(), encode(item_record(i, f"title {i}"))) for i in "abcde"])
    # `items` has one partition: only one of the two workers consumes it. (Two workers on one host need two
    # RocksDB data dirs.)
    first, second = stack.worker(), stack.worker(STREAMREC_DATA_DIR=str(stack.tmp / "state-2"))
    # Many users go a -> b -> c -> d -> e, spread over all partitions, so both workers learn that c follows b.
    stack.produce_events([event(f"w{u}", it, T0 + 10 * u + n) for u in range(30) for n, it in enumerate("abcde")])
    stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= 150, timeout=90)
    stack.produce(items, [(b"c", encode(item_record("c", "title c", available=False)))])
    time.sleep(3)   # the owner applies it; the other worker reads it from the catalog changelog
    probes = [event(f"p{u}", "b", T0 + 1000 + u) for u in range(24)]
    stack.produce_events(probes)
    want = {e.user_id for e in probes}
    recs = stack.consume(stack.topic("recommendations"),
                         lambda rs: want <= {m["user_id"] for _, m in rs}, timeout=90)
    for _, m in recs:
        if m["user_id"] in want:
            got = [it["item_id"] for it in m["items"]]
            assert got and "c" not in got and "b" not in got, (m["user_id"], got)
    first.assert_alive()
    second.assert_alive()
