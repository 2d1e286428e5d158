"""Property: whatever bytes arrive, every malformed event is dead-lettered with a reason, every valid one is
answered exactly once, and the worker stays up and ready. Counted exactly on the real broker.

Hypothesis generates each example's mix (malformed events of many kinds among valid ones, some valid ones under a
wrong or null key). One worker serves all examples on purpose (a worker per example would cost a minute each);
each example checks the totals it adds.
"""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from streamrec.events import EVENT_TYPES, MAX_ID_LEN, InvalidEvent, parse_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ids = st.text(min_size=1, max_size=24)          # any Unicode (no lone surrogates: those are not UTF-8)
ints = st.integers(-2**63, 2**63 - 1)           # what JSON encoders write as numbers


def valid_event(tag: str, n: int) -> st.SearchStrategy[dict]:
    return st.builds(
        lambda user, item, kind, ts, value, props: {
            "schema_version": 1, "event_id": f"{tag}-{n}", "user_id": f"{tag}-{user}", "item_id": item,
            "event_type": kind, "timestamp": ts, **({"value": value} if kind == "rating" else {}),
            **({"properties": props} if props else {})},
        ids, ids, st.sampled_from(EVENT_TYPES), st.floats(0, 1e11, allow_nan=False),
        st.floats(0, 10, allow_nan=False), st.dictionaries(st.text(max_size=8), ints, max_size=3))


def breaks(good: dict) -> st.SearchStrategy[bytes | None]:
    """Ways to spoil a valid event (each one is invalid by construction)."""
    def replaced(field: str, bad) -> bytes:
        return orjson.dumps({**good, field: bad})

    def dropped(field: str) -> bytes:
        return orjson.dumps({k: v for k, v in good.items() if k != field})

    raw_number = lambda text: json.dumps(good)[:-1].encode() + b', "value": ' + text + b"}"   # noqa: E731
    return st.one_of(
        st.just(None),                                                               # null value
        st.binary(max_size=300),                                                     # noise
        st.integers(1, 20_000).map(lambda d: b"[" * d + b"]" * d),                   # deep nesting
        st.integers(1, 20_000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 400]).map(raw_number),
        st.sampled_from(["event_id", "user_id", "item_id", "event_type", "timestamp", "schema_version"]).map(dropped),
        st.sampled_from(["event_id", "user_id", "item_id"]).flatmap(lambda f: st.one_of(
            st.just(replaced(f, "")), st.just(replaced(f, "x" * (MAX_ID_LEN + 1))),
            ints.map(lambda v: replaced(f, v)), st.just(replaced(f, None)),
            st.integers(MAX_ID_LEN + 1, 10_000).map(lambda n: replaced(f, "é" * n)))),
        st.text(max_size=12).filter(lambda t: t not in EVENT_TYPES).map(lambda t: replaced("event_type", t)),
        st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.01e11, allow_infinity=False)).filter(
            math.isfinite).map(lambda t: replaced("timestamp", t)),
        st.sampled_from([0, 2, True, "1"]).map(lambda v: replaced("schema_version", v)),
        st.text(min_size=1, max_size=8).filter(lambda k: k not in good).map(
            lambda k: orjson.dumps({**good, k: 1})),                                 # unknown field
        st.just(replaced("properties", {"blob": "z" * 20_000})),                     # too large
        st.just(orjson.dumps(good).replace(b'"schema_version"', b'"schema_\xff\xfeversion"')),  # bad UTF-8
        st.sampled_from([b"[]", b"1", b'"event"', b"null", b"true", b"{}"]),
    )


@st.composite
def mixes(draw) -> tuple[list[tuple[bytes | None, bytes]], list[tuple[bytes | None, bytes | None]]]:
    """(valid records, malformed records) of one example: (key, value) pairs."""
    tag = draw(st.uuids()).hex[:8]
    n_valid = draw(st.integers(20, 150))
    valid = [draw(valid_event(tag, n)) for n in range(n_valid)]
    good_records = []
    for ev in valid:   # mostly under the user's key; some mis-keyed or null-keyed (the worker re-keys those)
        key = draw(st.sampled_from([ev["user_id"].encode()] * 4 + [None, b"someone-else"]))
        good_records.append((key, orjson.dumps(ev)))
    bad_records = []
    for _ in range(draw(st.integers(50, 400))):
        value = draw(breaks(draw(st.sampled_from(valid))))
        key = draw(st.sampled_from([b"k", None, b"\xff" * 3, b"x" * 5000]))
        bad_records.append((b"k" if key is None and value is None else key, value))   # Kafka needs one of them
    return good_records, bad_records


def test_generated_hostile_input_is_dead_lettered_valid_input_answered_worker_alive(stack):
    worker = stack.worker()
    totals = {"good": 0, "bad": 0}
    interactions, dlq, recs = stack.topic("interactions"), stack.topic("interactions-dlq"), stack.topic(
        "recommendations")
    want_triggers: set[str] = set()

    # No shrinking: every step of it would be another round trip through the broker; the failing mix is printed.
    @settings(max_examples=5, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(mixes())
    def example(mix):
        good, bad = mix
        for _, value in bad:       # invalid by construction; the parser must agree before the worker is asked
            with pytest.raises(InvalidEvent):
                parse_event(value, stack.settings.max_event_bytes)
        records = good + bad
        records.sort(key=lambda r: hash(r[1]))                              # interleaved
        stack.produce(interactions, records)
        totals["good"] += len(good)
        totals["bad"] += len(bad)
        want_triggers.update(json.loads(v)["event_id"] for _, v in good)

        dead = stack.consume(dlq, lambda rs: len(rs) >= totals["bad"], timeout=90)
        answered = stack.consume(recs, lambda rs: want_triggers <= {m["trigger_event_id"] for _, m in rs},
                                 timeout=90)
        assert len(dead) == totals["bad"], "every malformed event dead-lettered, exactly once"
        assert all(m["reason"] and m["error"] for _, m in dead)
        assert len(answered) == totals["good"], "every valid event answered exactly once"
        worker.assert_alive()

    example()
    assert worker.get("/ready")[0] == 200
    print(f"hostile input: {totals['bad']} malformed dead-lettered, {totals['good']} valid answered")
