"""Data-set readers (tiny files in tmp_path) and the pure parts of replay (ordering, pacing, failures)."""

from __future__ import annotations

import json

import pytest

from streamrec.tools import replay as replay_mod
from streamrec.config import Settings
from streamrec.model.datasets import SEQUENCE_BASE_TS, detect_format, read_events, read_sequences, read_titles, sequences, \
    synthetic, synthetic_titles, write_sequences
from streamrec.events import Interaction, parse_event
from streamrec.stream.topics import validator


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def summary(events):
    return [(e.event_id, e.user_id, e.item_id, e.event_type, e.timestamp, e.value) for e in events]


def assert_valid_events(events):
    for e in events:
        assert parse_event(e.to_bytes()) == e


# --- format detection --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fmt", [
    ("ratings.dat", "movielens-dat"), ("u.data", "movielens-100k"), ("ratings.csv", "csv"), ("X.CSV", "csv"),
    ("Beauty.txt", "sequences"), ("ev.jsonl", "jsonl"), ("ev.ndjson", "jsonl"),
])
def test_detect_format(tmp_path, name, fmt):
    assert detect_format(tmp_path / name) == fmt


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="--format"):
        detect_format(tmp_path / "data.parquet")
    with pytest.raises(ValueError, match="unknown format"):
        read_events(write(tmp_path / "a.csv", "user,item\n"), fmt="xml")


# --- MovieLens ---------------------------------------------------------------------------------------------
def test_movielens_dat(tmp_path):
    f = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n\n2::661::3.5::978300000\r\n1::914::3::978301968\n",
              encoding="latin-1")
    events = read_events(f)
    assert summary(events) == [
        ("ratings-3", "2", "661", "rating", 978300000.0, 3.5),      # sorted by time; ids keep the line number
        ("ratings-1", "1", "1193", "rating", 978300760.0, 5.0),
        ("ratings-4", "1", "914", "rating", 978301968.0, 3.0),
    ]
    assert_valid_events(events)
    assert read_events(f) == events                                 # replaying twice gives the same ids


def test_movielens_dat_bad_line_raises(tmp_path):
    with pytest.raises(ValueError):
        read_events(write(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3\n"))
    with pytest.raises(ValueError):
        read_events(write(tmp_path / "ratings.dat", "1::2::five::4\n"))


def test_movielens_100k(tmp_path):
    f = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    assert summary(read_events(f)) == [
        ("u-3", "22", "377", "rating", 878887116.0, 1.0),
        ("u-1", "196", "242", "rating", 881250949.0, 3.0),
        ("u-2", "186", "302", "rating", 891717742.0, 3.0),
    ]
    assert read_sequences(f) == {"22": ["377"], "196": ["242"], "186": ["302"]}


def test_movielens_latest_csv_with_header(tmp_path):
    f = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n"
                                        "2,6,4.5,964982224\n")
    events = read_events(f)
    assert summary(events) == [
        ("ratings-2", "1", "3", "rating", 964981247.0, 4.0),
        ("ratings-3", "2", "6", "rating", 964982224.0, 4.5),
        ("ratings-1", "1", "1", "rating", 964982703.0, 4.0),
    ]
    assert_valid_events(events)
    assert read_sequences(f) == {"1": ["3", "1"], "2": ["6"]}


# --- generic CSV -------------------------------------------------------------------------------------------
def test_generic_csv_with_types_ids_and_missing_values(tmp_path):
    f = write(tmp_path / "events.csv", "id,user,item,type,ts,value\n"
                                       "a1,u1,i1,click,20,\n"
                                       "a2,u2,i2,rating,10,4\n"
                                       "a3,u1,i3,purchase,20,\n")
    events = read_events(f)
    assert summary(events) == [
        ("a2", "u2", "i2", "rating", 10.0, 4.0),
        ("a1", "u1", "i1", "click", 20.0, None),                    # ties keep file order (stable sort)
        ("a3", "u1", "i3", "purchase", 20.0, None),
    ]
    assert_valid_events(events)


def test_csv_without_time_or_type_columns(tmp_path):
    f = write(tmp_path / "plain.csv", "user_id,item_id,rating\nu,a,\nu,b,5\n")
    events = read_events(f)
    assert summary(events) == [("plain-1", "u", "a", "view", SEQUENCE_BASE_TS + 1, None),
                               ("plain-2", "u", "b", "rating", SEQUENCE_BASE_TS + 2, 5.0)]


def test_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="user and item"):
        read_events(write(tmp_path / "a.csv", "who,what\n1,2\n"))
    with pytest.raises(ValueError, match=r"b\.csv:3: unknown event type 'like'"):
        read_events(write(tmp_path / "b.csv", "user,item,type\n1,2,view\n1,3,like\n"))


# --- per-user sequence files -------------------------------------------------------------------------------
def test_sequence_file(tmp_path):
    f = write(tmp_path / "Beauty.txt", "1 10 11 12\n2 20 21\nlonely\n\n3 30\n")
    events = read_events(f)
    assert len(events) == 6
    assert all(e.event_type == "purchase" for e in events)
    assert {e.event_id for e in events} == {"Beauty-1-0", "Beauty-1-1", "Beauty-1-2", "Beauty-2-0", "Beauty-2-1",
                                             "Beauty-3-0"}
    by_id = {e.event_id: e for e in events}
    assert by_id["Beauty-1-2"].timestamp == SEQUENCE_BASE_TS + 120.0
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert read_sequences(f) == {"1": ["10", "11", "12"], "2": ["20", "21"], "3": ["30"]}
    assert_valid_events(events)


def test_write_sequences_round_trip(tmp_path):
    seqs = synthetic(n_users=5, n_items=20, length=6, n_clusters=2, seed=3)
    path = write_sequences(seqs, tmp_path / "syn.txt")
    assert read_sequences(path) == seqs


# --- JSONL -------------------------------------------------------------------------------------------------
def test_jsonl(tmp_path):
    lines = [{"event_id": "x1", "user_id": 7, "item_id": "a", "event_type": "rating", "timestamp": 5, "value": "4"},
             {"user_id": "u", "item_id": 9, "properties": {"p": 1}},
             {"user_id": "u", "item_id": "c", "event_type": "click", "timestamp": 1}]
    f = write(tmp_path / "ev.jsonl", "\n".join(json.dumps(d) for d in lines[:2]) + "\n\n" + json.dumps(lines[2]))
    events = read_events(f)
    assert summary(events) == [
        ("ev-4", "u", "c", "click", 1.0, None),
        ("x1", "7", "a", "rating", 5.0, 4.0),
        ("ev-2", "u", "9", "view", SEQUENCE_BASE_TS + 2, None),
    ]
    assert events[2].properties == {"p": 1}
    assert_valid_events(events)


def test_jsonl_bad_lines_raise(tmp_path):
    with pytest.raises(ValueError):
        read_events(write(tmp_path / "a.jsonl", '{"user_id": "u", "item_id": "i"}\n{oops\n'))
    with pytest.raises(KeyError):
        read_events(write(tmp_path / "b.jsonl", '{"user_id": "u"}\n'))
    with pytest.raises(ValueError, match=r"c\.jsonl:1: unknown event type 'like'"):
        read_events(write(tmp_path / "c.jsonl", '{"user_id": "u", "item_id": "i", "event_type": "like"}\n'))


# --- helpers -----------------------------------------------------------------------------------------------
def test_sequences_groups_in_order():
    evs = [Interaction("1", "a", "x", "view", 1.0), Interaction("2", "b", "y", "view", 2.0),
           Interaction("3", "a", "z", "view", 3.0)]
    assert sequences(evs) == {"a": ["x", "z"], "b": ["y"]}


def test_read_titles(tmp_path):
    tsv = write(tmp_path / "Beauty_items.tsv", "id\tasin\ttitle\n1\tB01\tLipstick Red\n2\tB02\tMascara\nbad\n")
    assert read_titles(tsv) == {"1": "Lipstick Red", "2": "Mascara"}
    csv_ = write(tmp_path / "movies.csv", 'movieId,title,genres\n1,"Toy Story (1995)",Animation|Comedy\n2,Heat,\n')
    assert read_titles(csv_) == {"1": "Toy Story (1995) (Animation, Comedy)", "2": "Heat"}


def test_synthetic_is_deterministic_and_in_range():
    a, b = synthetic(n_users=10, seed=1), synthetic(n_users=10, seed=1)
    assert a == b and a != synthetic(n_users=10, seed=2)
    assert len(a) == 10 and all(len(s) == 20 for s in a.values())
    titles = synthetic_titles()
    assert {i for s in a.values() for i in s} <= set(titles)


# --- replay: order, keys, pacing, failures (fake producer, fake clock) ------------------------------------
class FakeFuture:
    def __init__(self, error=None):
        self.error = error

    def add_errback(self, fn):
        if self.error is not None:
            fn(self.error)
        return self


class FakeProducer:
    def __init__(self, clock=None, fail_every=0, send_cost=0.0):
        self.sent, self.flushed, self.closed = [], False, False
        self.clock, self.fail_every, self.send_cost = clock, fail_every, send_cost

    def send(self, topic, key, value):
        t = None
        if self.clock is not None:
            t = self.clock.now
            self.clock.now += self.send_cost
        self.sent.append((topic, key, value, t))
        failed = self.fail_every and len(self.sent) % self.fail_every == 0
        return FakeFuture(RuntimeError("broker said no") if failed else None)

    def flush(self):
        self.flushed = True


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def perf_counter(self):
        return self.now

    def sleep(self, s):
        assert s > 0
        self.sleeps.append(s)
        self.now += s


def some_events(tmp_path, n=5):
    return read_events(write(tmp_path / "s.txt", "u1 " + " ".join(f"i{k}" for k in range(n)) + "\n"))


def test_replay_sends_in_order_keyed_by_user(tmp_path):
    events = some_events(tmp_path)
    prod = FakeProducer()
    n = replay_mod.replay(Settings(topic_prefix="t."), events, progress=False, prod=prod)
    assert n == len(events) == len(prod.sent) and prod.flushed
    assert not prod.closed                                  # a borrowed producer is left open
    assert [parse_event(v) for _, _, v, _ in prod.sent] == events
    assert {(t, k) for t, k, _, _ in prod.sent} == {("t.interactions", b"u1")}


def test_replay_rate_paces_against_start_time(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(replay_mod, "time", clock)
    prod = FakeProducer(clock=clock, send_cost=0.01)
    replay_mod.replay(Settings(), some_events(tmp_path, 5), rate=10.0, progress=False, prod=prod)
    send_times = [t - 100.0 for *_, t in prod.sent]
    # event i goes out at start + i / rate: the 10 ms each send costs does not add up to drift
    assert send_times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert sum(clock.sleeps) == pytest.approx(0.4 - 0.04)


def test_replay_does_not_sleep_when_behind(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(replay_mod, "time", clock)
    prod = FakeProducer(clock=clock, send_cost=0.5)           # slower than the asked-for 10 events/s
    replay_mod.replay(Settings(), some_events(tmp_path, 4), rate=10.0, progress=False, prod=prod)
    assert clock.sleeps == []


def test_replay_rate_zero_never_sleeps(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(replay_mod, "time", clock)
    replay_mod.replay(Settings(), some_events(tmp_path, 3), rate=0, progress=False, prod=FakeProducer(clock=clock))
    assert clock.sleeps == []


def test_replay_raises_when_sends_fail(tmp_path):
    prod = FakeProducer(fail_every=2)
    with pytest.raises(RuntimeError, match="2 of 5 events were not acknowledged"):
        replay_mod.replay(Settings(), some_events(tmp_path, 5), progress=False, prod=prod)
    assert prod.flushed


def test_load_catalog_records_validate(tmp_path):
    prod = FakeProducer()
    n = replay_mod.load_catalog(Settings(topic_prefix="p-"), {"1": "Boots", "2": "", "3": "x" * 2000},
                                progress=False, prod=prod)
    assert n == 3
    item_schema = validator("item.schema.json")
    records = {k.decode(): json.loads(v) for _, k, v, _ in prod.sent}
    for r in records.values():
        item_schema.validate(r)
    assert records["2"]["title"] == "2" and len(records["3"]["title"]) == 1000
    assert {t for t, *_ in prod.sent} == {"p-items"}
