"""Item popularity for the LM scorer's empty-history answers: counts with their total and top-N kept current on
every increment, and a bound on how many items are counted.

An empty-history request is answered from the most popular items, on the model's thread, while ``observe`` counts
on the event loop's thread under the same lock. Summing or sorting every count per request made that lock's
hold time grow with the catalog (1.59 s for 64 requests over 300k counted items); here a request sorts the top
``top_n`` only, and an increment is O(1) except when an item enters the top (O(top_n) then).
"""

from __future__ import annotations

import heapq
from typing import Collection, Mapping


class Popularity:
    """Observed counts per item, bounded to ``max_items`` items.

    Invariant: ``top`` holds the ``top_n`` items with the highest counts, i.e. no item outside it counts more than
    the least of it; when fewer than ``top_n`` items are counted, all of them are in it. Counts only grow between
    prunes, which is what keeps the invariant with a single comparison per increment.

    Memory bound: past ``max_items`` counted items, the least counted are forgotten down to 90% of it (a pruned
    item that comes back starts from 1 again: a long tail item, never near the top).
    """

    def __init__(self, max_items: int = 500_000, top_n: int = 1024) -> None:
        if top_n < 1 or max_items < 2 * top_n:
            raise ValueError("need 1 <= top_n and max_items >= 2 * top_n")
        self.max_items, self.top_n = max_items, top_n
        self.counts: dict[str, int] = {}
        self.total = 0
        self.top: dict[str, int] = {}
        self._least: str | None = None   # the item with the lowest count in top; None: to be looked up

    def __len__(self) -> int:
        return len(self.counts)

    def update(self, counts: Mapping[str, int]) -> None:
        for item, n in counts.items():
            self.counts[str(item)] = self.counts.get(str(item), 0) + int(n)
        self._rebuild()

    def add(self, item: str, n: int = 1) -> None:
        c = self.counts.get(item, 0) + n
        self.counts[item] = c
        self.total += n
        top = self.top
        if item in top:
            top[item] = c
            if item == self._least:
                self._least = None
        elif len(top) < self.top_n:
            top[item] = c
            self._least = None
        else:
            least = self._least_item()
            if c > top[least]:
                del top[least]
                top[item] = c
                self._least = None
        if len(self.counts) > self.max_items:
            self._prune()

    def ranked(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, int]]:
        """The ``k`` most counted items not in ``exclude``, most counted first. Equal counts at the edge of the
        top come in no promised order (``Counter.most_common`` made no promise either)."""
        out = [(i, c) for i, c in sorted(self.top.items(), key=_by_count) if i not in exclude][:k]
        if len(out) < k and len(self.counts) > len(self.top):   # exclusions ate the top: the rare slow path
            out = [(i, c) for i, c in sorted(self.counts.items(), key=_by_count) if i not in exclude][:k]
        return out

    def _least_item(self) -> str:
        if self._least is None:
            self._least = min(self.top, key=self.top.__getitem__)
        return self._least

    def _prune(self) -> None:
        keep = heapq.nlargest(int(self.max_items * 0.9), self.counts.items(), key=lambda ic: ic[1])
        self.counts = dict(keep)
        self._rebuild()

    def _rebuild(self) -> None:
        self.total = sum(self.counts.values())
        self.top = dict(heapq.nlargest(self.top_n, self.counts.items(), key=lambda ic: ic[1]))
        self._least = None


def _by_count(ic: tuple[str, int]) -> tuple[int, str]:
    return -ic[1], ic[0]
