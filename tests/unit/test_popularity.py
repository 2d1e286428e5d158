"""Popularity: the maintained total and top-N agree with counting everything, and memory stays bounded."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from streamrec.serve.popularity import Popularity


def test_total_and_ranking_agree_with_a_full_count_at_every_step():
    rng = random.Random(0)
    pop, brute = Popularity(max_items=10_000, top_n=8), Counter()
    items = [f"i{n}" for n in range(200)]
    weights = [1 / (n + 1) for n in range(200)]   # a long tail, so items keep entering and leaving the top
    for step in range(5000):
        item = rng.choices(items, weights)[0]
        pop.add(item)
        brute[item] += 1
        if step % 50 == 0:
            exclude = set(rng.sample(items[:20], 3))
            got = pop.ranked(5, exclude)
            want = [(i, c) for i, c in sorted(brute.items(), key=lambda ic: (-ic[1], ic[0])) if i not in exclude]
            assert pop.total == sum(brute.values())
            # same counts in the same order (items with equal counts may differ at the edge)
            assert [c for _, c in got] == [c for _, c in want[:5]]
            assert all(brute[i] == c for i, c in got) and not exclude & {i for i, _ in got}


def test_exclusions_that_cover_the_top_fall_back_to_every_count():
    pop = Popularity(max_items=100, top_n=2)
    pop.update({"a": 9, "b": 8, "c": 7, "d": 1})
    assert pop.ranked(2, {"a", "b"}) == [("c", 7), ("d", 1)]


def test_counted_items_stay_bounded_and_the_most_counted_survive():
    pop = Popularity(max_items=100, top_n=10)
    for _ in range(50):
        pop.add("hit")
    for n in range(1000):
        pop.add(f"tail-{n}")
        assert len(pop) <= 100
    assert pop.ranked(1) == [("hit", 50)]
    assert pop.total == sum(pop.counts.values())


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        Popularity(max_items=10, top_n=8)
