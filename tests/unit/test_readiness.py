"""Readiness: tables recovered, not rebalancing, and a broker that answered recently."""

from streamrec.stream.readiness import Readiness


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_not_ready_until_the_broker_has_answered_once():
    clock = Clock()
    r = Readiness(broker_timeout_s=10, clock=clock)
    ok, body = r.check(recovered=True, rebalancing=False)
    assert not ok and body["broker_reachable"] is False
    assert body["reasons"] == ["the broker has not answered yet"]
    r.broker_answered()
    ok, body = r.check(recovered=True, rebalancing=False)
    assert ok and body == {"ready": True, "recovered": True, "rebalancing": False, "broker_reachable": True,
                           "broker_silence_s": 0.0}


def test_broker_silence_longer_than_the_timeout_makes_the_worker_unready_then_ready_again():
    clock = Clock()
    r = Readiness(broker_timeout_s=10, clock=clock)
    r.broker_answered()
    clock.t += 9.5
    r.broker_failed("KafkaConnectionError: refused")
    assert r.check(recovered=True, rebalancing=False)[0]            # within the allowance: still ready
    clock.t += 1.0
    ok, body = r.check(recovered=True, rebalancing=False)
    assert not ok and body["broker_silence_s"] == 10.5
    assert body["reasons"] == ["no answer from the broker for 10 s (KafkaConnectionError: refused)"]
    r.broker_answered()
    assert r.check(recovered=True, rebalancing=False)[0]


def test_recovery_and_rebalancing_are_reasons_too():
    r = Readiness(broker_timeout_s=10, clock=Clock())
    r.broker_answered()
    ok, body = r.check(recovered=False, rebalancing=True)
    assert not ok
    assert body["reasons"] == ["tables are recovering", "the consumer group is rebalancing"]
