"""Operating a worker: restarts, HTTP answers at every stage of a start, broker outages, erasure."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from .conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T0 = 1_700_000_000.0


def http_get(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get_content_type(), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), e.read()


def test_lookups_right_after_a_restart_never_answer_500(stack):
    """A restarted worker with state but no traffic: its producer has never sent to the changelog, so Faust's
    router had no partition metadata for it and every lookup answered 500 until the first event came."""
    users = [f"r{u}" for u in range(12)]            # spread over all 4 partitions
    stack.extra_env["STREAMREC_LOG_FORMAT"] = "json"
    worker = stack.worker()
    stack.produce_events([event(u, it, T0 + n) for u in users for n, it in enumerate("abc")])
    stack.changelog_states(lambda st: all(st.get(u, {}).get("total") == 3 for u in users))
    assert worker.stop() == 0

    # Restart with no traffic; poll lookups from the moment the process starts until well after it is ready.
    seen: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for u in users + ["nobody"]:
                try:
                    status, ctype, _ = http_get(f"{worker.url}/recommendations/{u}")
                except OSError:          # not listening yet
                    time.sleep(0.1)
                    break
                seen.append((u, status, ctype))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        worker.start()
        time.sleep(1.0)
    finally:
        stop.set()
        poller.join(10)
    assert seen, "no lookup got an answer"
    assert not [s for s in seen if s[1] == 500], [s for s in seen if s[1] == 500][:5]
    assert {s for _, s, _ in seen} <= {200, 404, 503}
    assert all(ctype == "application/json" for _, _, ctype in seen)
    # Once ready, every known user answers 200 with recommendations, an unknown one 404 -- at once.
    for u in users:
        status, body = worker.get(f"/recommendations/{u}")
        assert status == 200 and body["user_id"] == u, (u, status, body)
    status, body = worker.get("/recommendations/nobody")
    assert status == 404 and "unknown user" in body["error"]
    logged = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    # JSON logs (STREAMREC_LOG_FORMAT=json) carry the worker's own lines, e.g. the warm-up after recovery
    assert any(r["logger"] == "streamrec.stream.app" and "scorer warmed" in r["message"] for r in logged)


def test_unknown_routes_answer_json_404_and_operator_metrics(stack):
    worker = stack.worker()
    for path in ("/recommendations/a/b", "/recommendations/", "/no/such/page"):
        status, ctype, body = http_get(worker.url + path)
        assert status == 404 and ctype == "application/json", (path, status, ctype, body)
        assert json.loads(body)["error"]

    stack.produce(stack.topic("interactions"), [(b"m", b"{nope"), (b"m", b"{nope2"), (b"m", b"[1]"),
                                                (b"m", event("m", "x", T0).to_bytes())])
    stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= 1)
    wait_for("dead letters counted", lambda: metric(worker, 'streamrec_dead_letters_total{reason="schema"}') == 1,
             30, worker)
    assert metric(worker, 'streamrec_dead_letters_total{reason="not_json"}') == 2
    assert metric(worker, "process_resident_memory_bytes") > 10e6
    assert metric(worker, "process_cpu_seconds_total") > 0
    assert metric(worker, "streamrec_rebalances_total") >= 1
    assert 0 < metric(worker, "streamrec_recovery_seconds") < 120


def metric(worker, name: str) -> float:
    """A sample's value from the worker's /metrics (0 when absent)."""
    _, _, body = http_get(worker.url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def warnings_and_errors(worker) -> int:
    return sum(1 for line in worker.log_path.read_text(errors="replace").splitlines()
               if "[WARNING]" in line or "[ERROR]" in line)


def wait_for(what: str, cond, timeout: float, worker=None) -> float:
    """Seconds until ``cond()`` held; fail after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if worker is not None:
            worker.assert_alive()
        try:
            if cond():
                return time.monotonic() - t0
        except (OSError, ValueError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s" + (f"; log tail:\n{worker.tail()}" if worker else ""))


def test_broker_outage_mid_stream_unready_then_ready_and_nothing_lost_or_doubled(private_broker, tmp_path):
    """The broker stops while the worker has events in hand, and comes back: /ready says 503 (with the reason)
    while it is away and 200 after, /health stays 200, the worker stays up; every event is answered and applied
    exactly once in the changelog."""
    from .conftest import Stack
    stack = Stack(private_broker.bootstrap, tmp_path, extra_env={"STREAMREC_READY_BROKER_TIMEOUT_S": "4"})
    stack.apply_topics()
    try:
        users = [f"o{u:02d}" for u in range(40)]
        n_each = 60
        evs = [event(u, f"i{n}", T0 + 100 * n + k, n=n) for n in range(n_each) for k, u in enumerate(users)]
        half = len(evs) // 2
        worker = stack.worker()
        stack.produce_events(evs[:half])
        wait_for("first recommendations", lambda: metric(worker, "streamrec_recommendations_total") >= 100,
                 60, worker)
        private_broker.stop()
        answered_at_stop = metric(worker, "streamrec_recommendations_total")
        waited = wait_for("/ready 503", lambda: worker.get("/ready")[0] == 503, 30, worker)
        status, body = worker.get("/ready")
        assert status == 503 and body["broker_reachable"] is False, body
        assert any("broker" in r for r in body["reasons"]), body
        assert worker.get("/health")[0] == 200
        time.sleep(3)
        worker.assert_alive()

        private_broker.start()
        wait_for("/ready 200 after the broker came back", lambda: worker.get("/ready")[0] == 200, 90, worker)
        outage_log_lines = warnings_and_errors(worker)
        stack.produce_events(evs[half:])
        want = {e.event_id for e in evs}
        stack.consume(stack.topic("recommendations"),
                      lambda rs: want <= {m["trigger_event_id"] for _, m in rs}, timeout=120)
        states = stack.changelog_states(lambda st: len(st) == len(users) and all(
            s["total"] >= n_each for s in st.values()), timeout=60)
        for u in users:
            assert states[u]["total"] == n_each and states[u]["counts"] == {"view": n_each}, (u, states[u]["total"])
        worker.assert_alive()
        # Rate-limited: ~1,800 lines for this outage without it (every reconnect attempt logged).
        assert outage_log_lines < 150, worker.tail(150)
        print(f"outage: {answered_at_stop:.0f}/{half} answered when the broker stopped; unready after "
              f"{waited:.1f} s; {outage_log_lines} warning/error lines logged")
    finally:
        stack.close()


def rocksdb_keys(data_dir) -> set[bytes]:
    """Every key in the worker's user_state RocksDB partitions (the worker must be stopped)."""
    from pathlib import Path
    from rocksdict import AccessType, Rdict
    keys: set[bytes] = set()
    paths = sorted(Path(data_dir).rglob("user_state-*.db"))
    assert paths, f"no user_state RocksDB under {data_dir}"
    for path in paths:
        db = Rdict(str(path), access_type=AccessType.read_only())
        try:
            keys.update(db.keys())
        finally:
            db.close()
    return keys


def test_erasure_removes_the_user_from_rocksdb_and_the_changelog_and_lookups_answer_404(stack):
    import shutil
    import subprocess
    import sys
    users = [f"e{u}" for u in range(8)]
    worker = stack.worker()
    stack.produce_events([event(u, it, T0 + n) for u in users for n, it in enumerate("abc")])
    stack.changelog_states(lambda st: all(st.get(u, {}).get("total") == 3 for u in users))
    assert worker.get("/recommendations/e1")[0] == 200

    out = subprocess.run([sys.executable, "-m", "streamrec", "erase", "e1", "e2", "--request-id", "ticket-9"],
                         env=stack.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_for("lookups of erased users answer 404",
             lambda: worker.get("/recommendations/e1")[0] == worker.get("/recommendations/e2")[0] == 404, 30, worker)
    assert all(worker.get(f"/recommendations/{u}")[0] == 200 for u in users if u not in ("e1", "e2"))
    # The changelog: the erased users' last record is a tombstone (compaction then drops their key entirely).
    changelog = f"{stack.settings.app_id}-user_state-changelog"
    records = stack.consume(changelog, lambda rs: {r.key for r in rs if r.value is None} >= {b"e1", b"e2"}, raw=True)
    last = {r.key: r.value for r in records}
    assert last[b"e1"] is None and last[b"e2"] is None and last[b"e0"] is not None
    assert metric(worker, "streamrec_erasures_total") == 2
    assert "ticket-9-e1" in worker.log_path.read_text()        # the request is logged by its id
    assert worker.stop() == 0
    keys = rocksdb_keys(stack.settings.data_dir)
    assert b"e1" not in keys and b"e2" not in keys and b"e0" in keys

    # A worker rebuilding from the changelog alone (local state lost) does not bring them back.
    shutil.rmtree(stack.settings.data_dir)
    worker = stack.worker()
    assert worker.get("/recommendations/e1")[0] == 404 and worker.get("/recommendations/e0")[0] == 200
    # Erasing again is harmless; acting again starts a new state with nothing from before.
    subprocess.run([sys.executable, "-m", "streamrec", "erase", "e1"], env=stack.env, check=True, timeout=60,
                   capture_output=True)
    wait_for("the repeated request carried out", lambda: metric(worker, "streamrec_erasures_total") == 1, 30, worker)
    assert worker.get("/recommendations/e1")[0] == 404
    stack.produce_events([event("e1", "q", T0 + 100)])
    state = stack.changelog_state("e1", until=lambda s: "q" in [h[0] for h in s["history"]])
    assert state["total"] == 1 and [h[0] for h in state["history"]] == ["q"]


def test_two_workers_one_killed_mid_stream_and_restarted_nothing_lost_or_doubled(stack):
    """Rebalance both ways under a live stream: the survivor takes over the killed worker's partitions (from the
    changelog), the restarted one takes some back (from its RocksDB + the changelog tail)."""
    users = [f"t{u:02d}" for u in range(40)]
    n_each = 50
    evs = [event(u, f"i{n}", T0 + 100 * n + k, n=n) for n in range(n_each) for k, u in enumerate(users)]
    first = stack.worker()
    second = stack.worker(STREAMREC_DATA_DIR=str(stack.tmp / "state-2"))
    stop = threading.Event()

    def trickle():
        for i in range(0, len(evs), 100):
            stack.produce_events(evs[i:i + 100])
            time.sleep(0.15)
        stop.set()

    producer = threading.Thread(target=trickle)
    producer.start()
    try:
        wait_for("the second worker answering", lambda: metric(second, "streamrec_recommendations_total") >= 50,
                 60, second)
        assert second.kill() != 0
        # Until the group notices, the survivor still forwards lookups of the dead worker's users to it: 503
        # with "retry", never 500.
        statuses = [http_get(f"{first.url}/recommendations/{u}")[0] for u in users]
        assert set(statuses) <= {200, 404, 503}, statuses
        wait_for("the survivor took over", lambda: first.get("/ready")[0] == 200
                 and metric(first, "streamrec_rebalances_total") >= 2, 60, first)
        second.start()                        # same data dir: RocksDB + changelog tail
        producer.join()
        want = {e.event_id for e in evs}
        recs = stack.consume(stack.topic("recommendations"),
                             lambda rs: want <= {m["trigger_event_id"] for _, m in rs}, timeout=180)
        assert want <= {m["trigger_event_id"] for _, m in recs}
        states = stack.changelog_states(lambda st: len(st) == len(users) and all(
            s["total"] >= n_each for s in st.values()), timeout=120)
        for u in users:
            assert states[u]["total"] == n_each and states[u]["counts"] == {"view": n_each}, (u, states[u]["total"])
        first.assert_alive()
        second.assert_alive()
        assert metric(first, "streamrec_rebalances_total") >= 3   # joined, took over, gave back
        print(f"two workers: lookups right after the kill {sorted(statuses)}; {len(evs)} events, {len(recs)} answers "
              f"({len(recs) - len(evs)} redelivered), rebalances seen by the survivor: "
              f"{metric(first, 'streamrec_rebalances_total'):.0f}")
    finally:
        stop.set()
        producer.join(60)
