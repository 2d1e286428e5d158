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


def test_unknown_routes_answer_json_404(stack):
    worker = stack.worker()
    for path in ("/recommendations/a/b", "/recommendations/", "/no/such/page"):
        status, ctype, body = http_get(worker.url + path)
        assert status == 404 and ctype == "application/json", (path, status, ctype, body)
        assert json.loads(body)["error"]
