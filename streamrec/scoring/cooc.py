"""The co-occurrence scorer: the default before a model exists, and the language-model scorer's fallback."""

from __future__ import annotations

import heapq
import json
import math
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from streamrec.scoring.base import ScoreRequest, Scored


class CooccurrenceScorer:
    """Item popularity plus co-occurrence with the user's most recent items.

    score(c) = sum over the last ``window`` history items h (newer weigh more) of
               w_h * cooc(h, c) / sqrt(pop(h) * pop(c))            (cosine-normalised co-occurrence)
               + popularity_weight * log1p(pop(c)) / log1p(max pop)  (breaks ties; the cold-start answer)

    Counts grow online from every applied event (``observe``) and can be warm-started from a data set (``fit``)
    or a saved file. Each item keeps at most ``max_neighbors`` co-occurring items so memory stays bounded.

    Scoring reads only the ``score_neighbors`` strongest neighbours of each history item (item-kNN): that is what
    keeps it at tens of microseconds per request, the difference between ~1k and several k events/s per worker.
    For rows longer than that the top list (with its normalised weights) is cached and rebuilt once the row has
    had about a quarter of its length in new co-occurrences, so its weights may lag the live counts a little;
    short rows are always read live.

    Nothing per request grows with the catalog: the popular items that top up a short answer come from a
    maintained list of the ``popular_n`` most popular (not a sort of all counts), and exclusions are only asked
    ``in``. Memory is bounded: past ``max_items`` known items the least popular are forgotten (their counts, rows
    and caches) down to ``max_items`` -- any item id an event carries is learnt, so without a bound a stream of
    one-off ids would grow the scorer forever.
    """

    name = "cooc"
    version = "cooc-1"

    def __init__(self, window: int = 5, max_neighbors: int = 200, popularity_weight: float = 0.05,
                 decay: float = 0.7, score_neighbors: int = 50, max_items: int = 200_000,
                 popular_n: int = 1024):
        self.window = window
        self.max_neighbors = max_neighbors
        self.score_neighbors = score_neighbors
        self.popularity_weight = popularity_weight
        self.decay = decay
        self.max_items = max_items
        self.popular_n = popular_n
        self.pop: Counter[str] = Counter()
        self.cooc: dict[str, Counter[str]] = defaultdict(Counter)
        self._max_pop = 0
        # observe() runs on the event loop; score() may run in the micro-batcher's thread (under a re-ranker)
        self._lock = threading.Lock()
        self._top: dict[str, list[tuple[str, int]]] = {}    # cached strongest neighbours of long rows
        self._changes: Counter[str] = Counter()              # bumps of a row since its top list was built
        # A superset of the popular_n most popular items: an item enters once its count passes _popular_floor
        # (the smallest count kept at the last trim); counts only grow, so nothing outside can overtake them.
        self._popular: dict[str, int] = {}
        self._popular_floor = 0

    # --- learning -------------------------------------------------------------------------------
    def observe(self, history: Sequence[str], item_id: str) -> None:
        with self._lock:
            self._observe(history, item_id)

    def _observe(self, history: Sequence[str], item_id: str) -> None:
        pop = self.pop
        n = pop[item_id] = pop.get(item_id, 0) + 1
        if n > self._max_pop:
            self._max_pop = n
        popular = self._popular
        if item_id in popular or n > self._popular_floor or len(popular) < self.popular_n:
            popular[item_id] = n
            if len(popular) > 2 * self.popular_n:
                self._trim_popular()
        limit = self.max_items + max(16, self.max_items // 4)
        if len(pop) > limit or len(self.cooc) > limit:
            self._forget_rare()
        # Both directions of each pair, inlined (one event = up to 2 * window bumps: the scorer's hottest loop).
        cooc, changes, cap = self.cooc, self._changes, 2 * self.max_neighbors
        for h in set(history[-self.window:]):
            if h == item_id:
                continue
            for a, b in ((h, item_id), (item_id, h)):
                row = cooc.get(a)
                if row is None:
                    row = cooc[a] = Counter()
                row[b] = row.get(b, 0) + 1
                changes[a] = changes.get(a, 0) + 1
                if len(row) > cap:
                    cooc[a] = Counter(dict(row.most_common(self.max_neighbors)))

    def _trim_popular(self) -> None:
        kept = heapq.nlargest(self.popular_n, self._popular.items(), key=_count)
        self._popular = dict(kept)
        self._popular_floor = kept[-1][1] if len(kept) >= self.popular_n else 0

    def _forget_rare(self) -> None:
        """Keep the ``max_items`` most popular items; the rest lose their counts, rows and caches (amortised: runs
        once per max_items/4 new items)."""
        keep = dict(heapq.nlargest(self.max_items, self.pop.items(), key=_count))
        for item in [i for i in self.pop if i not in keep]:
            self._popular.pop(item, None)
        for item in [i for i in self.cooc if i not in keep]:   # rows of items only ever seen in histories too
            del self.cooc[item]
            self._top.pop(item, None)
            self._changes.pop(item, None)
        self.pop = Counter(keep)
        self._max_pop = max(keep.values(), default=0)

    def fit(self, sequences: Iterable[Sequence[str]]) -> "CooccurrenceScorer":
        with self._lock:
            for seq in sequences:
                for i, item in enumerate(seq):
                    self._observe(seq[max(0, i - self.window):i], item)
        return self

    # --- scoring --------------------------------------------------------------------------------
    def neighbour_scores(self, history: Sequence[str]) -> dict[str, float]:
        """The co-occurrence part of the score (no popularity term) of every neighbour of the recent history: what
        ``score_one`` ranks, and what ``serve.lm.LMScorer`` adds to the model's logits when it blends."""
        # The hot loop of the default scorer (one call per event): locals and dict.get instead of attribute and
        # Counter lookups.
        pop = self.pop
        scores: dict[str, float] = {}
        get = scores.get
        weight = 1.0
        for h in reversed(history[-self.window:]):
            row = self._neighbors(h)
            if row:
                wh = weight / math.sqrt(pop.get(h, 0) or 1)
                for c, v in row:
                    scores[c] = get(c, 0.0) + wh * v
            weight *= self.decay
        return scores

    def blend_scores(self, histories: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """``neighbour_scores`` of several histories, under the lock (called from the model's thread while
        ``observe`` runs on the event loop)."""
        with self._lock:
            return [self.neighbour_scores(h) for h in histories]

    def score_one(self, req: ScoreRequest) -> list[tuple[str, float]]:
        pop = self.pop
        scores = self.neighbour_scores(req.history)
        norm = math.log1p(self._max_pop) or 1.0
        pw = self.popularity_weight / norm
        exclude = req.exclude
        candidates = [(c, sc + pw * math.log1p(pop.get(c, 0))) for c, sc in scores.items() if c not in exclude]
        if len(candidates) < req.k:   # not enough neighbours: top up with popular items
            for c, n in self._most_popular(req.k + len(scores) + 64):
                if c not in exclude and c not in scores:
                    candidates.append((c, pw * math.log1p(n)))
                    if len(candidates) >= req.k:
                        break
        return heapq.nlargest(req.k, candidates, key=_by_score_then_id)

    def _most_popular(self, first: int) -> Iterable[tuple[str, int]]:
        """Items by popularity, best first, lazily: the ``first`` best of the maintained list, then the rest of it,
        then (only if a request excluded all of those) the remaining counts."""
        head = heapq.nlargest(first, self._popular.items(), key=_count)
        yield from head
        if len(self._popular) > len(head):
            done = {c for c, _ in head}
            yield from sorted(((c, n) for c, n in self._popular.items() if c not in done), key=_count, reverse=True)
        if len(self.pop) > len(self._popular):
            listed = self._popular
            yield from sorted(((c, n) for c, n in self.pop.items() if c not in listed), key=_count, reverse=True)

    def _neighbors(self, h: str) -> list[tuple[str, float]]:
        """h's strongest neighbours c with cooc(h, c) / sqrt(pop(c))."""
        row = self.cooc.get(h)
        if not row:
            return []
        pop = self.pop
        if len(row) <= self.score_neighbors:
            return [(c, n / math.sqrt(pop.get(c, 0) or 1)) for c, n in row.items()]
        top = self._top.get(h)
        if top is None or self._changes[h] > max(8, len(row) // 4):
            top = self._top[h] = [(c, n / math.sqrt(pop.get(c, 0) or 1))
                                  for c, n in heapq.nlargest(self.score_neighbors, row.items(), key=_count)]
            self._changes[h] = 0
        return top

    def because(self, history: Sequence[str], item_id: str, n: int = 1) -> list[str]:
        """The recent history items that contributed most to ``item_id``'s co-occurrence score (newest first on
        ties), at most ``n``: the reason to show next to a recommendation. Empty when none co-occurred with it."""
        pop, cooc = self.pop, self.cooc
        weight, found = 1.0, []
        for age, h in enumerate(reversed(history[-self.window:])):
            row = cooc.get(h)
            v = row.get(item_id, 0) if row else 0
            if v:
                found.append((weight * v / math.sqrt(pop.get(h, 0) or 1), -age, h))
            weight *= self.decay
        return [h for _, _, h in heapq.nlargest(n, found)]

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        with self._lock:
            return [Scored(self.score_one(r), self.name, self.version) for r in requests]

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"version": self.version, "window": self.window,
                                          "max_neighbors": self.max_neighbors,
                                          "score_neighbors": self.score_neighbors,
                                          "popularity_weight": self.popularity_weight, "decay": self.decay,
                                          "pop": self.pop,
                                          "cooc": {k: dict(v) for k, v in self.cooc.items()}}))

    @classmethod
    def load(cls, path: str | Path) -> "CooccurrenceScorer":
        d = json.loads(Path(path).read_text())
        s = cls(window=d["window"], **{k: d[k] for k in ("max_neighbors", "popularity_weight", "decay", "score_neighbors") if k in d})
        s.pop = Counter(d["pop"])
        s.cooc = defaultdict(Counter, {k: Counter(v) for k, v in d["cooc"].items()})
        s._max_pop = max(s.pop.values(), default=0)
        s._popular = dict(s.pop)
        s._trim_popular()
        return s


def _by_score_then_id(cs: tuple[str, float]) -> tuple[float, str]:
    return cs[1], cs[0]


def _count(cn: tuple[str, int]) -> int:
    return cn[1]
