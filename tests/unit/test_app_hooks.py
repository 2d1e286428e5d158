"""The Faust wiring's lifecycle hooks (stream/app.py), driven without a broker: Faust signals and table callbacks
are called the way Faust calls them."""

from __future__ import annotations

import asyncio

from streamrec.config import Settings
from streamrec.scoring import CooccurrenceScorer
from streamrec.stream.app import create_app


class ClosingScorer(CooccurrenceScorer):
    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


def test_worker_stop_closes_the_scorer(tmp_path):
    scorer = ClosingScorer()
    app = create_app(Settings(data_dir=str(tmp_path)), scorer=scorer)
    asyncio.run(app.on_before_shutdown.send())   # what App.on_stop sends once the consumer has stopped
    assert scorer.closed == 1
