"""The no-op scorer (``scorer=none``): state is kept and every event is answered, with no items.

It exists to measure the framework apart from the scorer: a worker with ``STREAMREC_SCORER=none`` does everything
the real one does (parse, dedupe, RocksDB + changelog, one recommendation message per event) except the scoring
(``bench/e2e_bench.py`` runs both in one run).
"""

from __future__ import annotations

from typing import Sequence

from streamrec.scoring.base import ScoreRequest, Scored


class NullScorer:
    name = "none"
    version = "none-1"

    def observe(self, history: Sequence[str], item_id: str) -> None:
        pass

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        return [Scored([], self.name, self.version) for _ in requests]
