r"""The Faust app: topics, tables, agents and web pages of a streamrec worker, top to bottom.

    interactions --(process_interactions)--> user_state table (RocksDB + changelog)
                                         \--> scorer --> recommendations
                                         \--> interactions-dlq   (bad input, with the reason)
    items --------(update_catalog)-------> catalog global table  (titles for text-aware scoring)

The agent takes events from the stream in small batches (``take_events``) instead of one by one: per-event
``async for`` overhead in Faust is what limits a worker, and a batch lets one scorer call serve many users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import faust
import orjson

from streamrec import metrics
from streamrec.config import Settings
from streamrec.serve.build import build_scorer
from streamrec.serve.versions import ModelWatcher
from streamrec.stream import logs
from streamrec.stream.erasure import erase_request, expired_users
from streamrec.stream.adapters import (FaustStateStore, KafkaSink, RebalanceMetrics, RecoveringTable,
                                       broker_credentials, consumer_lags, decode_changelog, fatal,
                                       flush_before_transaction_commit, json_errors,
                                       partition_items, producer_metadata, readable_state)
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.readiness import Readiness
from streamrec.stream.topics import DEAD_LETTER, ERASURE, INTERACTIONS, ITEMS, RECOMMENDATIONS, spec_for

log = logging.getLogger(__name__)


def create_app(settings: Settings, scorer=None) -> faust.App:
    n_partitions = spec_for(settings, INTERACTIONS).partitions
    app = faust.App(
        settings.app_id,
        broker="kafka://" + settings.kafka_bootstrap.replace(",", ";kafka://"),
        broker_credentials=broker_credentials(settings),
        store="rocksdb://",
        datadir=settings.data_dir,
        topic_partitions=n_partitions,
        topic_allow_declare=False,     # topics come from topics/ (streamrec topics apply), not from Faust
        topic_disable_leader=True,
        processing_guarantee=settings.processing_guarantee,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4096,
        producer_linger_ms=settings.producer_linger_ms,
        producer_max_batch_size=256 * 1024,   # per partition; the 16 KiB default fills with ~20 recommendations
        producer_compression_type=None if settings.producer_compression == "none" else settings.producer_compression,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        **({"web_host": settings.web_advertised_host} if settings.web_advertised_host else {}),
        web_enabled=True,
        web_application_options={"middlewares": [json_errors]},
        table_cleanup_interval=60.0,
    )
    app.settings = settings
    interactions = app.topic(settings.topic(INTERACTIONS), key_serializer="raw", value_serializer="raw",
                             partitions=n_partitions)
    items = app.topic(settings.topic(ITEMS), key_serializer="raw", value_serializer="raw")
    recommendations = app.topic(settings.topic(RECOMMENDATIONS), key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.topic(DEAD_LETTER), key_serializer="raw", value_serializer="raw")
    erasure = app.topic(settings.topic(ERASURE), key_serializer="raw", value_serializer="raw", partitions=n_partitions)
    # One agent reads both: co-subscribed topics with equal partition counts are assigned together (Faust's
    # co-partitioning), so a user's erase request reaches the worker holding their state, in the same batches.
    interactions_and_erasure = app.topic(settings.topic(INTERACTIONS), settings.topic(ERASURE), key_serializer="raw",
                                         value_serializer="raw", partitions=n_partitions)

    # bytes -> Faust's raw codec: keys are UTF-8 user ids, values JSON we encode once ourselves
    # (state.encode_state); Faust's JSON codec would encode every write twice (RocksDB and changelog), slower.
    # Bounded RocksDB memory per partition (docs/operations.md, the soak): Faust's defaults let RSS grow for hours
    rocksdb = {"write_buffer_size": settings.rocksdb_write_buffer_mb << 20, "max_write_buffer_number": 2,
               "block_cache_size": settings.rocksdb_block_cache_mb << 20}
    user_state = app.tables.add(RecoveringTable(
        app, name="user_state", default=None, beacon=app.tables.beacon, partitions=n_partitions, key_type=bytes,
        value_type=bytes, options=rocksdb, help="per-user history, counters, last seen and recently applied event ids"))

    async def on_catalog_change(event: faust.EventT) -> None:
        # Called for every catalog changelog record a worker reads: during recovery on every worker, and live on
        # the workers that do not own the items partition (they hold the GlobalTable as a standby copy).
        try:
            item_id, record = str(decode_changelog(event.key)), decode_changelog(event.value)
            pipeline.apply_item(item_id, record)
            log.debug("catalog change seen: %s", item_id)
        except Exception:   # a catalog view must never stop recovery
            log.exception("unreadable catalog changelog record %r", event.key)

    catalog = app.GlobalTable("catalog", default=None, partitions=spec_for(settings, ITEMS).partitions, options=rocksdb,
                              on_changelog_event=on_catalog_change, help="item records from the items topic")
    scorer = scorer or build_scorer(settings)
    exactly_once = settings.processing_guarantee == "exactly_once"
    sink = KafkaSink(app, [interactions, recommendations, dead_letters, erasure], exactly_once)
    if exactly_once:
        flush_before_transaction_commit(app.producer)
        log.warning("processing_guarantee=exactly_once: with Faust 0.15.3 a crash can still stall a partition or "
                    "lose state updates after the restart (docs/benchmarks.md, 'A stall after the restart'); "
                    "at_least_once, the default, is the guarantee tested for no loss")
    pipeline = Pipeline(settings, scorer, FaustStateStore(user_state), sink, catalog)
    app.scorer, app.user_state, app.catalog, app.pipeline = scorer, user_state, catalog, pipeline
    readiness = app.readiness = Readiness(settings.ready_broker_timeout_s)
    rebalance_metrics = RebalanceMetrics()
    app.sensors.add(rebalance_metrics)
    app.on_rebalance_complete.connect(rebalance_metrics.recovered)
    changelog = user_state.changelog_topic.get_topic_name()

    async def warm_scorer(partitions: set[int]) -> None:
        """After every recovery: teach the scorer the histories in the user_state partitions this worker has just
        gained (``Pipeline.warm_partitions``: each partition once, while its stream is still paused).

        The scorers' online counts live in memory; without this a restarted worker, or one that takes over
        partitions at a rebalance, would recommend from nothing until the stream had taught it again.
        """
        try:
            users = await pipeline.warm_partitions(partitions, lambda p: partition_items(user_state, p))
        except Exception as exc:   # an unreadable stored state (state.StateError) or store: a fault of the worker
            fatal("warming the scorer from user_state failed", exc)
        log.info("scorer warmed from the histories of %d users (partitions now warm: %s)", users,
                 sorted(pipeline.warmed))

    async def note_revoked(partitions: set[int]) -> None:
        try:
            await pipeline.forget_partitions(partitions, lambda p: partition_items(user_state, p))
        except Exception as exc:
            fatal("reading revoked user_state partitions failed", exc)

    user_state.on_partitions_recovered = warm_scorer
    user_state.on_partitions_revoked = note_revoked

    @app.task
    async def learn_catalog() -> None:
        """Once the tables are recovered: the catalog's exclusions. Recovery from local RocksDB replays no changelog
        records (nothing for on_catalog_change to see), yet a restarted worker must know at once what not to
        recommend."""
        await app.tables.recovery.completed.wait()
        for item_id, record in catalog.items():
            pipeline.apply_item(str(item_id), record)

    @app.on_before_shutdown.connect
    async def close_scorer(sender: faust.App, **kwargs: Any) -> None:
        """Worker stop: close the micro-batcher (bounded wait for a model call in flight) so a call that never
        returns cannot hold the stop, and its daemon thread cannot hold the interpreter's exit."""
        close = getattr(scorer, "close", None)
        if close is not None:
            await close()

    @app.agent(interactions_and_erasure, name="process_interactions")
    async def process_interactions(stream):
        async for batch in stream.take_events(settings.take_batch, within=settings.take_within_s):
            try:
                await pipeline.handle_batch(batch)
            except Exception as exc:   # bad input never gets here (dead-lettered per event): this is a fault
                fatal(f"a batch of {len(batch)} interaction events failed", exc)

    @app.agent(items, name="update_catalog")
    async def update_catalog(stream):
        async for event in stream.events():
            try:
                await pipeline.handle_item(event)
            except Exception as exc:
                fatal("an item record failed", exc)

    if settings.user_retention_days > 0:
        @app.timer(interval=settings.retention_sweep_s)
        async def retention_sweep() -> None:
            """Retention of inactive users: an erase request for each user of this worker's partitions whose last
            event is older than ``user_retention_days``. The request carries the cut-off, so the agent erases only
            if the user has not acted since (requests and events of a user meet in order on its partition)."""
            if not app.tables.recovery.completed.is_set() or app.rebalancing:
                return
            sent = 0
            for partition in sorted(pipeline.warmed):
                states = [(key, readable_state(raw)) for key, raw in partition_items(user_state, partition)]
                for user, cutoff in expired_users(states, time.time(), settings.user_retention_days * 86400):
                    request = erase_request(user, f"retention-{int(cutoff)}", inactive_before=cutoff)
                    await erasure.send(key=user.encode(), value=orjson.dumps(request))
                    sent += 1
                await asyncio.sleep(0)   # let the agents run between partitions
            if sent:
                log.info("retention: %d inactive users to erase (last event before %d days ago)", sent,
                         settings.user_retention_days)

    watcher = ModelWatcher.for_worker(settings, scorer, catalog.items)
    if watcher is not None:
        @app.timer(interval=settings.model_watch_s)
        async def watch_model() -> None:
            """Model hot-swap: a new version under model_dir (or CURRENT changed) is loaded and checked off the
            event loop, then swapped in between batches; a bad one is refused and the old one keeps serving."""
            try:
                await watcher.poll()
            except Exception:   # e.g. the model volume unreadable for a moment: keep serving, look again later
                log.exception("looking for a new model version failed; still serving %s", scorer.version)

    if settings.log_repeat_interval_s > 0:
        @app.timer(interval=settings.log_repeat_interval_s)
        async def log_summaries() -> None:   # counts of held-back repeats, also when the flood has stopped
            logs.flush_all()

    @app.page("/metrics")
    async def metrics_page(web, request):
        with contextlib.suppress(Exception):   # no consumer yet (starting): no lag to show
            metrics.set_consumer_lag(consumer_lags(app.consumer, settings.topic(INTERACTIONS)))
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web, request):
        return web.json({"status": "ok", "app_id": settings.app_id})

    @app.timer(interval=max(0.5, min(3.0, settings.ready_broker_timeout_s / 4)))
    async def probe_broker() -> None:
        """Readiness: does the broker answer? Also keeps the lookup routing metadata (the changelog's) fetched."""
        probe_timeout = max(0.5, settings.ready_broker_timeout_s / 2)
        try:
            await producer_metadata(app, changelog, probe_timeout)
            answered = await asyncio.wait_for(app.producer._ensure_producer().client.force_metadata_update(),
                                              probe_timeout)
        except Exception as exc:   # the broker being away is what this measures, not a fault
            readiness.broker_failed(f"{type(exc).__name__}: {exc}")
            return
        if answered:
            readiness.broker_answered()
        else:
            readiness.broker_failed("metadata request failed on every known broker")

    def ready_now() -> tuple[bool, dict]:
        return readiness.check(recovered=app.tables.recovery.completed.is_set(), rebalancing=bool(app.rebalancing))

    @app.page("/ready")
    async def ready(web, request):
        ok, body = ready_now()
        return web.json(body, status=200 if ok else 503)

    @app.table_route(table=user_state, match_info="user_id")
    async def lookup_here(web, request, user_id):   # Faust forwards to the owner, or calls this on the owner
        status, body = await pipeline.lookup(user_id)
        return web.json(body, status=status)

    @app.page("/recommendations/{user_id}")
    async def lookup(web, request, user_id):
        if not app.tables.recovery.completed.is_set() or app.rebalancing:
            _, body = ready_now()
            return web.json({"error": "not ready: " + "; ".join(body.get("reasons", [])), "retry": True},
                            status=503)
        try:
            await producer_metadata(app, changelog, 5.0)
        except Exception as exc:   # the broker is away: which worker owns the user is unknown for now
            return web.json({"error": f"cannot route the lookup: {type(exc).__name__}: {exc}", "retry": True},
                            status=503)
        try:
            return await lookup_here(web, request, user_id=user_id)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:   # forwarding: the owner is away
            return web.json({"error": f"the worker that owns this user did not answer: {type(exc).__name__}",
                             "retry": True}, status=503)

    return app
