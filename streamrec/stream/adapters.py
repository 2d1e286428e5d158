"""Faust-side adapters of the worker: the pipeline's store and sink on Faust, the table hooks that say which
partitions were recovered or lost, the HTTP middleware and probes, and ``fatal`` (stop before a commit).

``app.py`` wires these to Faust in ``create_app``; ``pipeline.py`` never sees Faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from typing import Any, Awaitable, Callable, Iterable, Iterator, NoReturn

import faust
import orjson
from aiohttp import web as aiohttp_web
from faust import streams as faust_streams
from faust.sensors import Sensor

from streamrec import metrics
from streamrec.config import Settings
from streamrec.stream.state import StateError, decode_state

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


def decode_changelog(x: Any) -> Any:
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


def flush_before_transaction_commit(producer: Any) -> None:
    """Make ``producer.commit_transactions`` send Faust's buffered messages first (exactly_once only).

    A table write goes to its changelog through ``send_soon``: into the producer's buffer, sent later by a
    background task. Faust 0.15.3 does not wait for that buffer before a transaction commit, so a changelog write
    not yet sent lands in the *next* transaction while its event's offset commits in this one. A crash before the
    next commit loses the state update for good, and when no further event arrives on that partition the next
    transaction never commits at all: read_committed readers of the changelog (recovery) stop at it ("the stall").
    The buffer's own ``flush`` is not enough: it returns once the queue is empty, while the background task may
    still hold the last message it took, not yet handed to the transactional producer (one write per partition,
    lost in the SIGKILL test). So every send through the buffer is counted, and a commit waits until the queue is
    empty and nothing is in flight. The offsets handed to a commit are those of events already processed, whose
    writes are queued by then: they all join the transaction their offsets commit in.
    """
    buffer, commit = producer.buffer, producer.commit_transactions
    send_pending = buffer._send_pending     # replaced before the producer starts: its task binds the attribute
    in_flight = 0
    idle = asyncio.Event()
    idle.set()

    async def counted_send(fut: Any) -> None:
        nonlocal in_flight
        in_flight += 1
        idle.clear()
        try:
            await send_pending(fut)
        finally:
            in_flight -= 1
            if not in_flight:
                idle.set()

    async def commit_transactions(*args: Any, **kwargs: Any) -> Any:
        while buffer.size or in_flight:
            await buffer.flush()          # Faust's flush returns after 0.1 s without progress
            await idle.wait()
        await producer.flush()            # and what the Kafka clients still have in flight
        return await commit(*args, **kwargs)

    buffer._send_pending = counted_send
    producer.commit_transactions = commit_transactions


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


def readable_state(raw: bytes | None) -> dict | None:
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
