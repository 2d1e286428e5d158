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
import os
import time
import weakref
from typing import Any, Awaitable, Callable, Iterable, Iterator, NoReturn

import aiohttp
import faust
import orjson
from aiohttp import web as aiohttp_web
from faust import streams as faust_streams
from faust.sensors import Sensor

from streamrec import metrics
from streamrec.config import Settings
from streamrec.serve.build import build_scorer
from streamrec.serve.versions import ModelWatcher
from streamrec.stream import logs
from streamrec.stream.erasure import erase_request, expired_users
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.readiness import Readiness
from streamrec.stream.state import StateError, decode_state
from streamrec.stream.topics import DEAD_LETTER, ERASURE, INTERACTIONS, ITEMS, RECOMMENDATIONS, spec_for

log = logging.getLogger(__name__)


@contextlib.contextmanager
def processing(event: faust.EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event while we touch tables.

    Faust routes table reads and changelog writes by the *current* event's partition, which it only sets in
    per-event iteration; ``take_events`` hands us a list, so we set it per event ourselves.
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def fatal(what: str, exc: BaseException | None = None) -> NoReturn:
    """Stop the worker at once, before Faust can ack and commit the events in hand.

    Faust acks a ``take_events`` batch even when the agent raises, and would commit offsets of events that were
    never answered. Exiting instead makes Kafka redeliver them to the restarted worker (or to another one), where
    the dedupe ring keeps what was already applied from being applied twice: nothing is lost, nothing doubled.
    """
    log.critical("%s; exiting without committing, the events in hand will be redelivered", what, exc_info=exc)
    logging.shutdown()
    os._exit(70)


def broker_credentials(settings: Settings) -> Any:
    proto = settings.kafka_security_protocol.upper()
    ssl_context = settings.ssl_context()
    if proto.startswith("SASL"):   # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, over TLS when SASL_SSL
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism or "PLAIN", ssl_context=ssl_context)
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context)
    return None


def _json(x: Any) -> Any:
    """A changelog key or value: already decoded by Faust, or its JSON bytes/text."""
    if isinstance(x, (bytes, str)):
        try:
            return orjson.loads(x)
        except ValueError:
            return x.decode() if isinstance(x, bytes) else x
    return x


class FaustStateStore:
    """The pipeline's ``StateStore`` on a Faust table: reads and writes routed by the event being processed."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def get(self, key: bytes, event: faust.EventT | None = None) -> bytes | None:
        if event is None:
            return self.table.get(key)
        with processing(event):
            return self.table.get(key)

    def put(self, key: bytes, value: bytes, event: faust.EventT) -> None:
        with processing(event):
            self.table[key] = value

    def delete(self, key: bytes, event: faust.EventT) -> None:
        with processing(event):
            try:
                del self.table[key]   # the tombstone goes to the changelog first, then RocksDB forgets the key
            except KeyError:
                pass


class KafkaSink:
    """The pipeline's ``Sink``: the worker's producer, each delivery checked."""

    def __init__(self, app: faust.App, topics: list[faust.TopicT], exactly_once: bool) -> None:
        self.app, self.exactly_once = app, exactly_once
        self.topics = {t.get_topic_name(): t for t in topics}

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self.exactly_once:   # Faust's topic send joins the partition's transaction
            await self.topics[topic].send(key=key, value=value)
            return
        # Straight to the producer: Faust's per-message channel machinery costs more than the rest of the
        # event's work. Faust flushes the producer before it commits offsets; a message that still fails to
        # be delivered stops the worker before the next commit (see fatal()).
        fut = await self.app.producer.send(topic, key, value, None, None, None)
        fut.add_done_callback(_delivered)


def _delivered(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        fatal("a message could not be delivered to Kafka", fut.exception())


class RecoveringTable(faust.Table):
    """A ``faust.Table`` that says which of its active partitions have just been recovered, after every
    rebalance (``on_partitions_recovered``), and which were revoked (``on_partitions_revoked``).

    Faust calls ``on_recovery_completed`` once the changelog of each newly assigned partition is read and *before*
    it resumes fetching the partitions' events (``tables/recovery.Recovery.on_recovery_completed``); the table's
    own ``on_recover`` callbacks are told nothing about which partitions.
    """

    on_partitions_recovered: Callable[[set[int]], Awaitable[None]] | None = None
    on_partitions_revoked: Callable[[set[int]], Awaitable[None]] | None = None

    _actives: set[int] = set()   # partitions active at the last recovery

    async def on_rebalance(self, assigned, revoked, newly_assigned, generation_id: int = 0) -> None:
        # Not ``revoked``: a partition that stops being active here usually stays assigned as a standby (same
        # database, soon fed by the new owner's changelog writes). Noted now, before anything of the new owner's
        # is read into it.
        still = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in self.changelog_topic.topics}
        lost, self._actives = self._actives - still, self._actives & still
        if lost and self.on_partitions_revoked is not None:
            await self.on_partitions_revoked(lost)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps, standby_tps) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        self._actives = {tp.partition for tp in active_tps}
        if self.on_partitions_recovered is not None:
            await self.on_partitions_recovered(set(self._actives))


def partition_items(table: faust.Table, partition: int) -> Iterable[tuple[bytes, bytes]]:
    """The stored (key, value) pairs of one partition of a RocksDB-backed table.

    Faust's public iteration (``table.values()``) covers every active partition at once; the per-partition
    database is only reachable through the store's ``_db_for_partition`` (faust/stores/rocksdb.py).
    """
    store = table.data
    return store._visible_items(store._db_for_partition(partition))


def _readable(raw: bytes | None) -> dict | None:
    """A stored state for the retention sweep; an unreadable one is skipped here (the agent stops on it, with the
    reason, when that user's next event arrives)."""
    try:
        return decode_state(raw)
    except StateError:
        return None


def consumer_lags(consumer: Any, topic: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> records after this worker's committed offset, for its assigned ``topic`` partitions.

    Faust 0.15.3 keeps the committed offsets (Kafka's meaning: the next offset to read) in
    ``Consumer._committed_offset``; before the first commit the read position stands in. The highwater is the one
    aiokafka learnt from its last fetch of the partition.
    """
    lags = {}
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        highwater = consumer.highwater(tp)
        position = consumer._committed_offset.get(tp)
        if position is None and consumer._read_offset.get(tp) is not None:
            position = consumer._read_offset[tp] + 1
        if highwater is not None and position is not None:
            lags[(tp.topic, tp.partition)] = max(0, highwater - position)
    return lags


@aiohttp_web.middleware
async def json_errors(request, handler):
    """Every answer is JSON: aiohttp's own 404/405 pages and unexpected errors are plain text otherwise."""
    try:
        return await handler(request)
    except aiohttp_web.HTTPException as exc:
        if exc.status < 400:
            raise
        return aiohttp_web.json_response({"error": exc.reason, "path": request.path}, status=exc.status)
    except Exception as exc:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return aiohttp_web.json_response({"error": f"internal error: {type(exc).__name__}"}, status=500)


async def producer_metadata(app: faust.App, topic: str, timeout_s: float) -> None:
    """Make sure the producer knows ``topic``'s partitions.

    Faust routes a table lookup by hashing the key with the *producer's* metadata of the changelog topic, which
    the producer only fetches when it first sends there: a freshly started worker answered every lookup with a
    ``TypeError`` (HTTP 500) until its first event. Raises ``TimeoutError`` when the broker does not answer.
    """
    producer = app.producer._ensure_producer()   # faust NotReady before the producer has started
    await asyncio.wait_for(producer.partitions_for(topic), timeout_s)


class RebalanceMetrics(Sensor):
    """Rebalances counted, and the time from a rebalance's start until the tables are recovered (what a worker
    joining, leaving or restarting costs the partitions it takes over)."""

    started: float | None = None

    def on_rebalance_start(self, app: faust.App) -> dict:
        metrics.REBALANCES.inc()
        self.started = time.monotonic()
        return super().on_rebalance_start(app)

    async def recovered(self, sender: Any = None, **kwargs: Any) -> None:   # app.on_rebalance_complete receiver
        if self.started is not None:
            metrics.RECOVERY.set(time.monotonic() - self.started)


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
    user_state = app.tables.add(RecoveringTable(
        app, name="user_state", default=None, beacon=app.tables.beacon, partitions=n_partitions, key_type=bytes,
        value_type=bytes, help="per-user history, counters, last seen and recently applied event ids"))

    async def on_catalog_change(event: faust.EventT) -> None:
        # Called for every catalog changelog record a worker reads: during recovery on every worker, and live on
        # the workers that do not own the items partition (they hold the GlobalTable as a standby copy).
        try:
            item_id, record = str(_json(event.key)), _json(event.value)
            pipeline.apply_item(item_id, record)
            log.debug("catalog change seen: %s", item_id)
        except Exception:   # a catalog view must never stop recovery
            log.exception("unreadable catalog changelog record %r", event.key)

    catalog = app.GlobalTable("catalog", default=None, partitions=spec_for(settings, ITEMS).partitions,
                              on_changelog_event=on_catalog_change, help="item records from the items topic")
    scorer = scorer or build_scorer(settings)
    sink = KafkaSink(app, [interactions, recommendations, dead_letters, erasure],
                     settings.processing_guarantee == "exactly_once")
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
                states = [(key, _readable(raw)) for key, raw in partition_items(user_state, partition)]
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
