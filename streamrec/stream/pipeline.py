"""The worker's per-batch logic, without Faust: parse -> dedupe/apply -> score -> messages.

``app.py`` wires a ``Pipeline`` to Faust (topics, tables, agents, pages); everything that decides what happens to
an event lives here, so a unit test can drive it with fake events, a dict for a table and a list for a producer.

What goes where:
  * bad input (an event or item record that does not parse) -> the dead-letter topic, with the reason;
  * an erase request (``user-erasure``, read by the same agent in the same batches) -> the user's state deleted:
    RocksDB and a tombstone in the changelog; their later events start a new state;
  * a fault of the worker itself (its store, its state, its scorer without a fallback) -> an exception out of
    ``handle_batch``: the agent then stops the worker before Faust commits the batch (``app.fatal``), and Kafka
    redelivers it; the dedupe ring keeps redelivered events from being applied twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, MutableMapping, Protocol, Sequence

import orjson

from streamrec import metrics
from streamrec.config import Settings
from streamrec.events import InvalidEvent, parse_event
from streamrec.scoring import CooccurrenceScorer, ScoreRequest, Scored
from streamrec.stream import messages
from streamrec.stream.catalog import validate_item
from streamrec.stream.erasure import parse_erase_request
from streamrec.stream.state import apply_event, decode_state, encode_state, history_items, seen_items
from streamrec.stream.topics import DEAD_LETTER, ERASURE, INTERACTIONS, RECOMMENDATIONS

log = logging.getLogger(__name__)


class Message(Protocol):          # the parts of a Kafka record the pipeline reads (Faust's Message has them)
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


class Event(Protocol):            # a Faust event, or anything with a .message
    message: Message


class Sink(Protocol):
    """Where messages go: a Kafka producer (``app.py``) or a list in a test."""

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...


class StateStore(Protocol):
    """The user_state table. ``event`` is the event a read or write is made for: Faust routes a table key by the
    partition of the event being processed (``None`` for reads outside the stream, e.g. HTTP lookups)."""

    def get(self, key: bytes, event: Event | None = None) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, event: Event) -> None: ...

    def delete(self, key: bytes, event: Event) -> None:
        """Remove ``key`` and write a tombstone to the changelog, also when the key is already gone."""


class Pipeline:
    def __init__(self, settings: Settings, scorer: Any, store: StateStore, sink: Sink,
                 catalog: MutableMapping[str, dict] | None = None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.fallback = scorer if isinstance(scorer, CooccurrenceScorer) else getattr(scorer, "fallback", None)
        self.store = store
        self.sink = sink
        self.catalog = {} if catalog is None else catalog
        self.unavailable: set[str] = set()   # never recommended: available=false or deleted in the catalog
        self.topics = {name: settings.topic(name) for name in (INTERACTIONS, RECOMMENDATIONS, DEAD_LETTER, ERASURE)}
        self._applied = metrics.EVENTS.labels("applied")
        self._duplicate = metrics.EVENTS.labels("duplicate")

    # -- interactions ----------------------------------------------------------------------------------------

    async def handle_batch(self, batch: Sequence[Event]) -> None:
        """Apply a batch of interaction events and publish one recommendation per applied (or redelivered) event.

        Raises on a fault of the worker (store, state, scorer): the caller must not commit the batch.
        """
        settings = self.settings
        metrics.AGENT_BATCH.observe(len(batch))
        applied: list[tuple[Any, dict, bool]] = []
        # Newest state of each user touched by this batch, and the event to write it under: the table (RocksDB
        # + changelog) is written once per user per batch, not once per event. None: erased.
        dirty: dict[str, tuple[Event, dict | None]] = {}
        for event in batch:
            if event.message.topic == self.topics[ERASURE]:
                await self.erase(event, dirty)
                continue
            try:
                interaction = parse_event(event.message.value, settings.max_event_bytes)
            except InvalidEvent as exc:
                await self.dead_letter(event, exc.kind, exc.reason)
                continue
            user = interaction.user_id
            key = event.message.key
            if key != user.encode():
                # A user's events must share a partition (that is where their state lives): re-key, like
                # Faust's group_by, and let the copy be applied when it comes back.
                await self.sink.send(self.topics[INTERACTIONS], user.encode(), event.message.value)
                metrics.EVENTS.labels("rekeyed").inc()
                continue
            try:
                before = dirty[user][1] if user in dirty else decode_state(self.store.get(key, event))
                after, is_new = apply_event(before, interaction, history_size=settings.history_size,
                                            dedupe_window=settings.dedupe_window)
            except Exception as exc:   # keep the worker alive; the event is kept in the dead-letter topic
                log.exception("failed to apply event")
                await self.dead_letter(event, "processing", f"{type(exc).__name__}: {exc}"[:500])
                continue
            # Duplicates are written too: after a hard crash the local RocksDB can hold writes whose changelog
            # records never left the producer; rewriting the state when their events come back puts it in the
            # changelog again, so a worker that later rebuilds from the changelog alone still has them.
            dirty[user] = (event, after)
            if is_new:
                self.scorer.observe(history_items(before), interaction.item_id)   # reaches its fallback too
                self._applied.inc()
            else:
                self._duplicate.inc()
            applied.append((interaction, after, not is_new))
        for user, (event, state) in dirty.items():
            if state is None:
                self.store.delete(event.message.key, event)
            else:
                self.store.put(event.message.key, encode_state(state), event)
        if not applied:
            return
        # Coalesce: one request per user, from their newest state; every event of theirs gets the answer.
        latest = {i.user_id: s for i, s, _ in applied}
        users = list(latest)
        answers = dict(zip(users, await self.score([self.request(u, latest[u]) for u in users])))
        for interaction, _, redelivered in applied:
            msg = messages.recommendation(interaction.user_id, answers[interaction.user_id],
                                          trigger_event_id=interaction.event_id,
                                          event_timestamp=interaction.timestamp, redelivered=redelivered)
            await self.sink.send(self.topics[RECOMMENDATIONS], interaction.user_id.encode(), messages.encode(msg))
        metrics.RECOMMENDATIONS.inc(len(applied))

    async def erase(self, event: Event, dirty: dict[str, tuple[Event, dict | None]]) -> None:
        """An erase request: the user's state is deleted at the end of the batch; later events start afresh.

        Repeating it is harmless (at-least-once): the tombstone is written again, also when the key is already
        gone locally -- after a hard crash RocksDB may have lost the key while its tombstone never left the
        producer. The online scorer keeps no per-user data (its counts are item-item aggregates, rebuilt from the
        remaining table after a restart), so there is nothing of the user's to forget there.
        """
        try:
            request = parse_erase_request(event.message.value)
        except InvalidEvent as exc:
            await self.dead_letter(event, exc.kind, exc.reason)
            return
        user = request["user_id"]
        if event.message.key != user.encode():   # the state lives on the partition of the user's key
            await self.sink.send(self.topics[ERASURE], user.encode(), event.message.value)
            return
        dirty[user] = (event, None)
        metrics.ERASURES.inc()
        log.info("erase request %s carried out", request["request_id"])   # the request id, not the user id

    def request(self, user_id: str, state: dict) -> ScoreRequest:
        return ScoreRequest(user_id, tuple(history_items(state)), self.settings.top_k,
                            frozenset(seen_items(state) | self.unavailable), state["total"])

    async def score(self, requests: list[ScoreRequest]) -> list[Scored]:
        started = time.perf_counter()
        scorer, fallback = self.scorer, self.fallback
        batched = hasattr(scorer, "score_async")   # the micro-batcher records its own batch and compute metrics
        try:
            results = await scorer.score_async(requests) if batched else scorer.score(requests)
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

    async def dead_letter(self, event: Event, error: str, reason: str) -> None:
        msg = event.message
        await self.sink.send(self.topics[DEAD_LETTER], msg.key, messages.encode(messages.dead_letter(
            reason=reason, error=error, source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
            key=msg.key, value=msg.value, max_value_bytes=self.settings.max_event_bytes)))
        metrics.EVENTS.labels("dead_letter").inc()
        metrics.DEAD_LETTERS.labels(error).inc()
        log.warning("dead-lettered %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)

    # -- lookups (HTTP) --------------------------------------------------------------------------------------

    async def lookup(self, user_id: str) -> tuple[int, dict]:
        """(HTTP status, JSON body) for ``GET /recommendations/{user_id}`` on the worker that owns the user."""
        state = decode_state(self.store.get(user_id.encode()))
        if state is None:
            return 404, {"error": f"unknown user {user_id!r}"}
        [answer] = await self.score([self.request(user_id, state)])
        return 200, messages.recommendation(user_id, answer, trigger_event_id="", event_timestamp=state["last_seen"])

    # -- the catalog -----------------------------------------------------------------------------------------

    async def handle_item(self, event: Event) -> None:
        """An ``items`` record: a new or changed item (titles for cold start, availability) or a deletion."""
        msg = event.message
        try:
            record = None if msg.value is None else validate_item(orjson.loads(msg.value))
            item_id = record["item_id"] if record is not None else (msg.key or b"").decode()
            if not item_id:
                raise ValueError("a deletion (null value) needs the item id as its key")
        except (ValueError, RecursionError) as exc:   # orjson errors and UnicodeDecodeError are ValueErrors
            await self.dead_letter(event, "schema", f"item record: {exc}")
            return
        # A deletion is kept as a marker record, not removed: a restarted worker must still know not to
        # recommend the item, long after Kafka has compacted a tombstone away.
        self.catalog[item_id] = record if record is not None else {"item_id": item_id, "deleted": True}
        self.apply_item(item_id, record)
        metrics.CATALOG_ITEMS.set(len(self.catalog))

    def apply_item(self, item_id: str, record: dict | None) -> None:
        """Every worker's view of the catalog: what not to recommend, and new items for the scorer (cold start)."""
        gone = record is None or record.get("deleted") or not record.get("available", True)
        (self.unavailable.add if gone else self.unavailable.discard)(item_id)
        if hasattr(self.scorer, "on_item"):
            self.scorer.on_item(item_id, None if record is None or record.get("deleted") else record)

    # -- warm start ------------------------------------------------------------------------------------------

    def learn_histories(self, states: Iterable[bytes | None]) -> int:
        """Teach the scorer the histories of stored user states (after recovery); returns how many users."""
        users = 0
        for raw in states:
            items = history_items(decode_state(raw))
            for i, item in enumerate(items):
                self.scorer.observe(items[:i], item)
            users += 1
        return users
