"""Two workers and a rebalance: the partitions a worker gains later warm its scorer, each user counted once."""

from __future__ import annotations

import time
import urllib.request

import pytest

from .conftest import event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T0 = 1_700_000_000.0


def metric(worker, name: str) -> float:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_partitions_gained_at_a_later_rebalance_warm_the_scorer_once(stack):
    first = stack.worker()
    second = stack.worker(STREAMREC_DATA_DIR=str(stack.tmp / "state-2"))
    first.wait_ready(90)   # the rebalance that gave the second worker its share is over
    users = 40
    stack.produce_events([event(f"u{u}", it, T0 + 10 * u + n) for u in range(users) for n, it in enumerate("xy")])
    stack.consume(stack.topic("recommendations"), lambda rs: len(rs) >= 2 * users, timeout=90)
    applied_by_first = metric(first, 'streamrec_events_total{outcome="applied"}')
    assert 0 < applied_by_first < 2 * users, "both workers must have had a share of the users"
    assert metric(first, "streamrec_warmup_users_total") == 0   # nothing was stored when it started

    assert second.stop() == 0   # the first worker gains the second's partitions at this (later) rebalance
    own = applied_by_first / 2
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and metric(first, "streamrec_warmup_users_total") == 0:
        time.sleep(0.5)
    first.wait_ready(60)
    # exactly the users of the gained partitions: none of its own replayed again, none missing
    assert metric(first, "streamrec_warmup_users_total") == users - own
    first.assert_alive()
