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
import weakref
from typing import Any, Iterator, NoReturn

import faust
import orjson
from faust import streams as faust_streams

from streamrec import metrics
from streamrec.config import Settings
from streamrec.serve.build import build_scorer
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.topics import DEAD_LETTER, INTERACTIONS, ITEMS, RECOMMENDATIONS, spec_for

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
        table_cleanup_interval=60.0,
    )
    app.settings = settings
    interactions = app.topic(settings.topic(INTERACTIONS), key_serializer="raw", value_serializer="raw",
                             partitions=n_partitions)
    items = app.topic(settings.topic(ITEMS), key_serializer="raw", value_serializer="raw")
    recommendations = app.topic(settings.topic(RECOMMENDATIONS), key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.topic(DEAD_LETTER), key_serializer="raw", value_serializer="raw")

    # bytes -> Faust's raw codec: keys are UTF-8 user ids, values JSON we encode once ourselves
    # (state.encode_state); Faust's JSON codec would encode every write twice (RocksDB and changelog), slower.
    user_state = app.Table("user_state", default=None, partitions=n_partitions, key_type=bytes, value_type=bytes,
                           help="per-user history, counters, last seen and recently applied event ids")

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
    pipeline = Pipeline(settings, scorer, FaustStateStore(user_state),
                        KafkaSink(app, [interactions, recommendations, dead_letters], settings.processing_guarantee == "exactly_once"),
                        catalog)
    app.scorer, app.user_state, app.catalog, app.pipeline = scorer, user_state, catalog, pipeline

    @app.task
    async def learn_from_table() -> None:
        """Once the tables are recovered: the catalog's exclusions, and the scorer taught from the histories in this
        worker's user_state partitions.

        The scorers' online counts live in memory; without this a restarted worker (or one that took over
        partitions) would recommend from nothing until the stream had taught it again.
        """
        await app.tables.recovery.completed.wait()
        # The catalog too: recovery from local RocksDB replays no changelog records (nothing for
        # on_catalog_change to see), yet a restarted worker must know at once what not to recommend.
        for item_id, record in catalog.items():
            pipeline.apply_item(str(item_id), record)
        users, chunk = 0, []
        for _, raw in user_state.items():
            chunk.append(raw)
            if len(chunk) == 500:
                users += pipeline.learn_histories(chunk)
                chunk.clear()
                await asyncio.sleep(0)   # let the agents run meanwhile
        users += pipeline.learn_histories(chunk)
        log.info("scorer warmed up from the histories of %d users", users)

    @app.agent(interactions, name="process_interactions")
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

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web, request):
        return web.json({"status": "ok", "app_id": settings.app_id})

    @app.page("/ready")
    async def ready(web, request):
        recovered = app.tables.recovery.completed.is_set()
        ok = recovered and not app.rebalancing
        return web.json({"ready": ok, "recovered": recovered, "rebalancing": bool(app.rebalancing)},
                        status=200 if ok else 503)

    @app.page("/recommendations/{user_id}")
    @app.table_route(table=user_state, match_info="user_id")
    async def lookup(web, request, user_id):
        status, body = await pipeline.lookup(user_id)
        return web.json(body, status=status)

    return app
