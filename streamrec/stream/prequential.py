"""Prequential ("test, then train") quality of what the worker actually serves.

Every time a user acts, the list last served to that user is scored against the item they chose: hit@k, NDCG@k
and reciprocal rank (0 when the item was not in the list). Then the event is applied and a new list is served.
This measures the recommendations in the stream itself, online learning and fallbacks included, which the
offline leave-one-out protocol (``model/evaluate.py``) cannot.

Pure bookkeeping: the worker (``pipeline.py``) feeds it and exports it as Prometheus metrics; ``streamrec
prequential`` feeds it from a replay of a data file and prints the report.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class PrequentialStats:
    events: int = 0                  # events that found a served list to judge
    cold: int = 0                    # events of users with nothing served yet (not judged)
    hits: int = 0                    # chosen item within the served top k
    ndcg: float = 0.0                # sums; divide by ``events``
    rr: float = 0.0
    fallback_lists: int = 0          # judged lists that came from the fallback scorer
    recommended: set[str] = field(default_factory=set)   # distinct items ever served (catalogue coverage)
    chosen: set[str] = field(default_factory=set)        # distinct items users chose

    def report(self, k: int) -> dict:
        n = max(self.events, 1)
        return {"events": self.events, "cold_events": self.cold, f"HR@{k}": self.hits / n,
                f"NDCG@{k}": self.ndcg / n, "MRR": self.rr / n, "fallback_share": self.fallback_lists / n,
                "coverage": len(self.recommended) / max(len(self.chosen | self.recommended), 1),
                "distinct_recommended": len(self.recommended)}


class Prequential:
    """The last list served to each user (bounded: least recently active users are forgotten first)."""

    def __init__(self, k: int = 10, max_users: int = 200_000) -> None:
        self.k = k
        self.max_users = max_users
        self.last: OrderedDict[str, tuple[tuple[str, ...], bool]] = OrderedDict()
        self.stats = PrequentialStats()

    def judge(self, user_id: str, item_id: str) -> tuple[float, float, float] | None:
        """Score the list last served to ``user_id`` against the item they just chose: (hit, ndcg, rr), or None
        when nothing was served to them yet."""
        self.stats.chosen.add(item_id)
        served = self.last.get(user_id)
        if served is None:
            self.stats.cold += 1
            return None
        items, fallback = served
        try:
            rank = items.index(item_id) + 1
        except ValueError:
            rank = 0
        hit = 1.0 if 0 < rank <= self.k else 0.0
        gain = 1.0 / math.log2(rank + 1) if hit else 0.0
        rr = 1.0 / rank if rank else 0.0
        s = self.stats
        s.events += 1
        s.hits += int(hit)
        s.ndcg += gain
        s.rr += rr
        s.fallback_lists += int(fallback)
        return hit, gain, rr

    def served(self, user_id: str, items: Sequence[str], fallback: bool = False) -> None:
        self.last[user_id] = (tuple(items[: self.k]), fallback)
        self.last.move_to_end(user_id)
        self.stats.recommended.update(items[: self.k])
        while len(self.last) > self.max_users:
            self.last.popitem(last=False)

    def forget(self, user_id: str) -> None:
        self.last.pop(user_id, None)
