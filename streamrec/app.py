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
from pathlib import Path
from typing import Any, Iterator, NoReturn

import faust
import orjson
from faust import streams as faust_streams

from . import messages, metrics
from .catalog import validate_item
from .config import Settings
from .events import InvalidEvent, parse_event
from .scoring import CooccurrenceScorer, ScoreRequest, Scored
from .state import apply_event, decode_state, encode_state, history_items, seen_items
from .topics import DEAD_LETTER, INTERACTIONS, ITEMS, RECOMMENDATIONS, spec_for

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
    ssl_context = None
    if "SSL" in proto:
        import ssl
        ssl_context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
        if settings.kafka_ssl_certfile:
            ssl_context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
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


def has_model(model_dir: str) -> bool:
    """A `streamrec train` output directory or its model/ subdirectory (HF config.json next to vocab.json)."""
    return any((Path(model_dir) / sub / "config.json").is_file() for sub in ("", "model"))


def build_scorer(settings: Settings):
    """The scorer the worker uses.

    * no trained model: co-occurrence alone (it learns online from the stream);
    * a trained model (``model_dir``): the item LM behind the micro-batcher, co-occurrence as its fallback;
    * plus ``reranker_dir``: a local causal LM re-ranks the first stage's candidates, in the same micro-batches.
    """
    choice = settings.scorer
    if choice == "auto":
        choice = "lm" if settings.model_dir and has_model(settings.model_dir) else "cooc"
        if settings.model_dir and choice == "cooc":   # e.g. a fresh volume before the first model lands
            log.warning("no trained model under %s yet: scoring with co-occurrence", settings.model_dir)
    if choice not in ("lm", "cooc"):
        raise ValueError(f"unknown scorer {settings.scorer!r} (auto, lm or cooc)")
    if choice == "cooc" and not settings.reranker_dir:
        return CooccurrenceScorer()
    from .batching import MicroBatcher   # heavy imports (torch, onnxruntime) only when a model is asked for
    if choice == "lm":
        from .serving import build_lm_scorer
        first = build_lm_scorer(settings)
        fallback = first.fallback
    else:
        first = fallback = CooccurrenceScorer()
    model = first
    if settings.reranker_dir:   # over cooc: the first stage is the fallback itself (observed once, via the model)
        from .rerank import LLMReranker
        model = LLMReranker(settings.reranker_dir, {}, first, n_candidates=settings.rerank_candidates)
    return MicroBatcher(model, fallback=fallback, max_batch_size=settings.max_batch_size,
                        max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                        timeout_s=settings.scorer_timeout_s)


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
    scorer = scorer or build_scorer(settings)
    fallback = scorer if isinstance(scorer, CooccurrenceScorer) else getattr(scorer, "fallback", None)
    unavailable: set[str] = set()   # never recommended: available=false or deleted in the catalog

    def apply_item(item_id: str, record: dict | None) -> None:
        """Every worker's view of the catalog: what not to recommend, and new items for the scorer (cold start)."""
        gone = record is None or record.get("deleted") or not record.get("available", True)
        (unavailable.add if gone else unavailable.discard)(item_id)
        if hasattr(scorer, "on_item"):
            scorer.on_item(item_id, None if record is None or record.get("deleted") else record)

    async def on_catalog_change(event: faust.EventT) -> None:
        # Called for every catalog changelog record a worker reads: during recovery on every worker, and live on
        # the workers that do not own the items partition (they hold the GlobalTable as a standby copy).
        try:
            item_id, record = str(_json(event.key)), _json(event.value)
            apply_item(item_id, record)
            log.debug("catalog change seen: %s", item_id)
        except Exception:   # a catalog view must never stop recovery
            log.exception("unreadable catalog changelog record %r", event.key)

    catalog = app.GlobalTable("catalog", default=None, partitions=spec_for(settings, ITEMS).partitions,
                              on_changelog_event=on_catalog_change, help="item records from the items topic")
    app.scorer, app.user_state, app.catalog = scorer, user_state, catalog

    exactly_once = settings.processing_guarantee == "exactly_once"

    def delivered(fut) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            fatal("a message could not be delivered to Kafka", fut.exception())

    async def publish(topic: faust.TopicT, key: bytes | None, value: bytes) -> None:
        if exactly_once:   # Faust's topic send joins the partition's transaction
            await topic.send(key=key, value=value)
        else:
            # Straight to the producer: Faust's per-message channel machinery costs more than the rest of the
            # event's work. Faust flushes the producer before it commits offsets; a message that still fails to
            # be delivered stops the worker before the next commit (see fatal()).
            fut = await app.producer.send(topic.get_topic_name(), key, value, None, None, None)
            fut.add_done_callback(delivered)

    async def dead_letter(event: faust.EventT, error: str, reason: str) -> None:
        msg = event.message
        await publish(dead_letters, msg.key, messages.encode(messages.dead_letter(
            reason=reason, error=error, source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
            key=msg.key, value=msg.value, max_value_bytes=settings.max_event_bytes)))
        metrics.EVENTS.labels("dead_letter").inc()
        log.warning("dead-lettered %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)

    async def score(requests: list[ScoreRequest]) -> list[Scored]:
        started = time.perf_counter()
        batched = hasattr(scorer, "score_async")   # the micro-batcher records its own batch and compute metrics
        try:
            if batched:
                results = await scorer.score_async(requests)
            else:
                results = scorer.score(requests)
        except Exception as exc:   # a scorer bug must not stop the stream: answer from the fallback, say so
            if fallback is None or fallback is scorer:
                raise
            log.exception("scorer failed, using fallback")
            metrics.FALLBACKS.labels("error").inc(len(requests))
            results = fallback.score(requests)
            for r in results:
                r.fallback, r.fallback_reason = True, f"{type(exc).__name__}: {exc}"[:200]
        if not batched:
            metrics.COMPUTE.labels(scorer.name).observe(time.perf_counter() - started)
            metrics.SCORE_BATCH.observe(len(requests))
        return results

    applied_n, duplicate_n = metrics.EVENTS.labels("applied"), metrics.EVENTS.labels("duplicate")

    async def handle_batch(batch: list[faust.EventT]) -> None:
        metrics.AGENT_BATCH.observe(len(batch))
        applied: list[tuple[Any, dict, bool]] = []
        # Newest state of each user touched by this batch, and the event to write it under: the table (RocksDB
        # + changelog) is written once per user per batch, not once per event.
        dirty: dict[str, tuple[faust.EventT, dict]] = {}
        for event in batch:
            try:
                interaction = parse_event(event.message.value, settings.max_event_bytes)
            except InvalidEvent as exc:
                await dead_letter(event, exc.kind, exc.reason)
                continue
            user = interaction.user_id
            key = event.message.key
            if key != user.encode():
                # A user's events must share a partition (that is where their state lives): re-key, like
                # Faust's group_by, and let the copy be applied when it comes back.
                await publish(interactions, user.encode(), event.message.value)
                metrics.EVENTS.labels("rekeyed").inc()
                continue
            try:
                if user in dirty:
                    before = dirty[user][1]
                else:
                    with processing(event):
                        before = decode_state(user_state.get(key))
                after, is_new = apply_event(before, interaction, history_size=settings.history_size,
                                            dedupe_window=settings.dedupe_window)
            except Exception as exc:   # keep the worker alive; the event is kept in the dead-letter topic
                log.exception("failed to apply event")
                await dead_letter(event, "processing", f"{type(exc).__name__}: {exc}"[:500])
                continue
            # Duplicates are written too: after a hard crash the local RocksDB can hold writes whose changelog
            # records never left the producer; rewriting the state when their events come back puts it in the
            # changelog again, so a worker that later rebuilds from the changelog alone still has them.
            dirty[user] = (event, after)
            if is_new:
                scorer.observe(history_items(before), interaction.item_id)   # reaches its fallback too
                applied_n.inc()
            else:
                duplicate_n.inc()
            applied.append((interaction, after, not is_new))
        for user, (event, state) in dirty.items():
            with processing(event):
                user_state[event.message.key] = encode_state(state)
        if not applied:
            return
        # Coalesce: one request per user, from their newest state; every event of theirs gets the answer.
        latest = {i.user_id: s for i, s, _ in applied}
        users = list(latest)
        requests = [ScoreRequest(u, tuple(history_items(latest[u])), settings.top_k,
                                 frozenset(seen_items(latest[u]) | unavailable), latest[u]["total"]) for u in users]
        answers = dict(zip(users, await score(requests)))
        for interaction, _, redelivered in applied:
            msg = messages.recommendation(interaction.user_id, answers[interaction.user_id],
                                          trigger_event_id=interaction.event_id,
                                          event_timestamp=interaction.timestamp, redelivered=redelivered)
            await publish(recommendations, interaction.user_id.encode(), messages.encode(msg))
        metrics.RECOMMENDATIONS.inc(len(applied))

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
            apply_item(str(item_id), record)
        users = 0
        for _, raw in user_state.items():
            items = history_items(decode_state(raw))
            for i, item in enumerate(items):
                scorer.observe(items[:i], item)
            users += 1
            if users % 500 == 0:
                await asyncio.sleep(0)   # let the agents run meanwhile
        log.info("scorer warmed up from the histories of %d users", users)

    @app.agent(interactions, name="process_interactions")
    async def process_interactions(stream):
        async for batch in stream.take_events(settings.take_batch, within=settings.take_within_s):
            try:
                await handle_batch(batch)
            except Exception as exc:   # bad input never gets here (dead-lettered per event): this is a fault
                fatal(f"a batch of {len(batch)} interaction events failed", exc)

    @app.agent(items, name="update_catalog")
    async def update_catalog(stream):
        async for event in stream.events():
            try:
                await handle_item(event)
            except Exception as exc:
                fatal("an item record failed", exc)

    async def handle_item(event: faust.EventT) -> None:
        msg = event.message
        try:
            record = None if msg.value is None else validate_item(orjson.loads(msg.value))
            item_id = record["item_id"] if record is not None else (msg.key or b"").decode()
            if not item_id:
                raise ValueError("a deletion (null value) needs the item id as its key")
        except (ValueError, RecursionError) as exc:   # orjson errors and UnicodeDecodeError are ValueErrors
            await dead_letter(event, "schema", f"item record: {exc}")
            return
        # A deletion is kept as a marker record, not removed: a restarted worker must still know not to
        # recommend the item, long after Kafka has compacted a tombstone away.
        catalog[item_id] = record if record is not None else {"item_id": item_id, "deleted": True}
        apply_item(item_id, record)
        metrics.CATALOG_ITEMS.set(len(catalog))

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
        state = decode_state(user_state.get(user_id.encode()))
        if state is None:
            return web.json({"error": f"unknown user {user_id!r}"}, status=404)
        [answer] = await score([ScoreRequest(user_id, tuple(history_items(state)), settings.top_k,
                                             frozenset(seen_items(state) | unavailable), state["total"])])
        return web.json(messages.recommendation(user_id, answer, trigger_event_id="", event_timestamp=state["last_seen"]))

    return app
