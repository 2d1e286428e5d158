"""The Faust wiring's lifecycle hooks (stream/app.py), driven without a broker: Faust signals and table callbacks
are called the way Faust calls them."""

from __future__ import annotations

import asyncio

from streamrec.config import Settings
from streamrec.scoring import CooccurrenceScorer, ScoreRequest
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


def test_every_recovery_warms_the_scorer_from_the_partitions_it_gained(tmp_path):
    """Faust calls the table's on_recovery_completed after each rebalance's recovery, before it resumes the
    partitions' streams; the user_state table hands the recovered partitions to Pipeline.warm_partitions."""
    from faust.types import TP

    from streamrec.stream.state import encode_state, new_state

    class Recording(CooccurrenceScorer):
        observed: list[str] = []

        def observe(self, history, item_id):
            self.observed.append(item_id)
            super().observe(history, item_id)

    scorer = Recording()
    app = create_app(Settings(data_dir=str(tmp_path)), scorer=scorer)
    table = app.user_state
    topic = table.changelog_topic.get_topic_name()

    def put(partition: int, user: str, items: str) -> None:
        state = new_state() | {"history": [[it, "view", n] for n, it in enumerate(items)], "total": len(items)}
        table.data._db_for_partition(partition).put(user.encode(), encode_state(state))

    async def go():
        put(0, "u0", "ab")
        put(2, "u2", "xy")
        await table.on_recovery_completed({TP(topic, 0), TP(topic, 1)}, set())          # first assignment
        first = scorer.score_one(ScoreRequest("p", ("x",), 5))
        await table.on_recovery_completed({TP(topic, 0), TP(topic, 1), TP(topic, 2)}, set())   # a later one
        second = scorer.score_one(ScoreRequest("p", ("x",), 5))
        return first, second

    first, second = asyncio.run(go())
    assert "y" not in [i for i, _ in first]
    assert second[0][0] == "y"
    assert app.pipeline.warmed == {0, 1, 2}
    # partition 0 was replayed once, not again at the second recovery: each stored event observed once
    assert sorted(scorer.observed) == ["a", "b", "x", "y"]


def test_a_revoked_partition_is_noted_before_its_store_closes(tmp_path):
    from faust.types import TP

    from streamrec.stream.state import encode_state, new_state

    app = create_app(Settings(data_dir=str(tmp_path)))
    table = app.user_state
    topic = table.changelog_topic.get_topic_name()
    table.data._db_for_partition(3).put(b"u", encode_state(new_state() | {"total": 7}))

    async def go():
        await table.on_recovery_completed({TP(topic, 3)}, set())
        await table.on_rebalance(set(), {TP(topic, 3), TP("interactions", 3)}, set())

    asyncio.run(go())
    assert app.pipeline.warmed == set() and app.pipeline._taught == {3: {b"u": 7}}


def test_rocksdb_memory_per_partition_is_bounded_by_the_settings(tmp_path):
    """Faust's defaults (3 x 64 MB memtables, a 2 GB block cache per partition) let the worker's RSS grow for the
    whole 30-minute soak; the tables get the settings' bounds instead."""
    app = create_app(Settings(data_dir=str(tmp_path), rocksdb_write_buffer_mb=4, rocksdb_block_cache_mb=16),
                     scorer=CooccurrenceScorer())
    for table in (app.user_state, app.catalog):
        options = table.data.rocksdb_options
        assert options.write_buffer_size == 4 << 20 and options.max_write_buffer_number == 2
        assert options.block_cache_size == 16 << 20
