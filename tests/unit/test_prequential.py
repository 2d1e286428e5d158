"""Prequential quality: hand-computed judgements, and the pipeline feeding them in event order."""

from __future__ import annotations

import math

from streamrec.config import Settings
from streamrec.events import Interaction
from streamrec.scoring import CooccurrenceScorer, Scored
from streamrec.stream.prequential import Prequential
from streamrec.tools.prequential import prequential


def test_judge_scores_the_last_served_list_hand_computed():
    p = Prequential(k=3)
    assert p.judge("u", "a") is None                       # nothing served yet: not judged, counted cold
    p.served("u", ["x", "a", "y", "z"])                    # only the top 3 count
    hit, gain, rr = p.judge("u", "a")
    assert hit == 1.0 and math.isclose(gain, 1 / math.log2(3)) and rr == 0.5
    p.served("u", ["x", "y", "z", "a"], fallback=True)
    assert p.judge("u", "a") == (0.0, 0.0, 0.0)            # rank 4 is outside the top 3 (and not in the list kept)
    r = p.stats.report(3)
    assert r["events"] == 2 and r["cold_events"] == 1 and r["HR@3"] == 0.5 and r["fallback_share"] == 0.5
    assert math.isclose(r["MRR"], 0.25)


def test_memory_is_bounded_least_recent_users_forgotten_first():
    p = Prequential(k=2, max_users=2)
    for u in ("a", "b", "c"):
        p.served(u, ["i"])
    assert list(p.last) == ["b", "c"]


class Fixed:
    """Always recommends item "next" (so a user choosing "next" after being served is a hit at rank 1)."""
    name, version = "fixed", "0"

    def score(self, requests):
        return [Scored([("next", 1.0), ("other", 0.5)], self.name, self.version) for _ in requests]

    def observe(self, history, item):
        pass


def ev(n: int, user: str, item: str) -> Interaction:
    return Interaction(f"e{n}", user, item, "view", float(n))


def test_replay_through_the_pipeline_judges_each_event_against_the_previous_batch():
    events = [ev(0, "u", "a"), ev(1, "u", "next"), ev(2, "u", "b"), ev(3, "u", "other")]
    r = prequential(Settings(top_k=2), events, batch=1, scorer=Fixed(), progress=False)
    # event 0: cold; 1: "next" at rank 1; 2: "b" missed; 3: "other" at rank 2
    assert r["cold_events"] == 1 and r["events"] == 3
    assert math.isclose(r["HR@2"], 2 / 3) and math.isclose(r["MRR"], (1 + 0 + 0.5) / 3)
    assert r["messages"] == 4


def test_replay_with_the_cooc_scorer_learns_online():
    # every user walks a -> b -> c; later users are served what earlier ones did next
    events = [ev(10 * u + i, f"u{u}", item) for u in range(20) for i, item in enumerate("abc")]
    r = prequential(Settings(), events, batch=1, scorer=CooccurrenceScorer(), progress=False)
    assert r["HR@10"] > 0.9 and r["scorer"] == "cooc"


def test_the_worker_exports_prequential_counters():
    from streamrec import metrics
    before = {m: m._value.get() for m in (metrics.PREQ_EVENTS, metrics.PREQ_HITS, metrics.PREQ_RR)}
    prequential(Settings(top_k=2), [ev(0, "u", "a"), ev(1, "u", "next"), ev(2, "u", "b")], batch=1,
                scorer=Fixed(), progress=False)
    assert metrics.PREQ_EVENTS._value.get() - before[metrics.PREQ_EVENTS] == 2
    assert metrics.PREQ_HITS._value.get() - before[metrics.PREQ_HITS] == 1
    assert metrics.PREQ_RR._value.get() - before[metrics.PREQ_RR] == 1.0
    assert b"streamrec_prequential_hits_total" in metrics.render()


def test_warmup_events_are_applied_but_not_judged():
    events = [ev(0, "u", "a"), ev(1, "u", "next"), ev(2, "u", "b"), ev(3, "u", "other")]
    r = prequential(Settings(top_k=2), events, batch=1, scorer=Fixed(), progress=False, warmup=2)
    # judged: event 2 ("b", a miss) and event 3 ("other", rank 2); nothing cold: the warm-up served u already
    assert r["events"] == 2 and r["cold_events"] == 0 and r["HR@2"] == 0.5 and r["warmup"] == 2


def test_periodic_retraining_swaps_the_scorer_between_batches():
    class Always:
        version = "0"

        def __init__(self, item):
            self.name, self.item = f"always-{item}", item

        def score(self, requests):
            return [Scored([(self.item, 1.0)], self.name, self.version) for _ in requests]

        def observe(self, history, item):
            pass

    seen_by_retrain: list[int] = []

    def retrain(events):
        seen_by_retrain.append(len(events))
        return Always("z")

    # the user always picks "z"; the first scorer always serves "y", the retrained one "z"
    events = [ev(n, "u", "z") for n in range(10)]
    r = prequential(Settings(top_k=1), events, batch=2, scorer=Always("y"), progress=False, warmup=2,
                    retrain=retrain, retrain_every=4)
    assert seen_by_retrain == [6, 10]                 # everything streamed so far, every 4 judged events
    assert [x["after_events"] for x in r["retrains"]] == [6, 10]
    # judged batches [2,3] [4,5] [6,7] [8,9]; the swap comes after [4,5], whose list ("y") judges [6,7]: misses.
    # Only [8,9] meets a list from the retrained scorer: 2 hits of 8.
    assert r["events"] == 8 and r["HR@1"] == 2 / 8


def test_scorers_are_closed_when_swapped_and_at_the_end_awaiting_async_close():
    closed: list[str] = []

    class Closing(Fixed):
        def __init__(self, name):
            self.name = name

        async def close(self):
            closed.append(self.name)

    events = [ev(n, "u", "next") for n in range(6)]
    prequential(Settings(top_k=2), events, batch=2, scorer=Closing("first"), progress=False,
                retrain=lambda evs: Closing(f"after-{len(evs)}"), retrain_every=4)
    assert closed == ["first", "after-4"]
