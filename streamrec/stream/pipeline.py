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

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, MutableMapping, Protocol, Sequence

import orjson

from streamrec import metrics
from streamrec.config import Settings
from streamrec.events import InvalidEvent, parse_event
from streamrec.scoring import CooccurrenceScorer, Exclusion, ScoreRequest, Scored
from streamrec.stream import messages
from streamrec.stream.catalog import validate_item
from streamrec.stream.prequential import Prequential
from streamrec.stream.erasure import parse_erase_request
from streamrec.stream.state import apply_event, decode_state, encode_state, history_items, new_state, seen_items
from streamrec.stream.topics import DEAD_LETTER, ERASURE, INTERACTIONS, RECOMMENDATIONS

log = logging.getLogger(__name__)


class Message(Protocol):          # the parts of a Kafka record the pipeline reads (Faust's Message has them)
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: float | None         # the record's Kafka timestamp, seconds (when it was produced)


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
        # What requests see of it: a frozen copy, made once per burst of catalog changes rather than once per
        # request, and safe to read from a scorer thread while the catalog agent changes ``unavailable``.
        self._unavailable_frozen: frozenset[str] | None = frozenset()
        self._catalog_size: int | None = None   # items in the catalog table, counted once, then kept up to date
        self.topics = {name: settings.topic(name) for name in (INTERACTIONS, RECOMMENDATIONS, DEAD_LETTER, ERASURE)}
        self.warmed: set[int] = set()        # user_state partitions whose histories the scorer has been taught
        self._taught: dict[int, dict[bytes, int]] = {}   # revoked partition -> user key -> events taught then
        self._applied = metrics.EVENTS.labels("applied")
        self.prequential = Prequential(settings.top_k)
        self._duplicate = metrics.EVENTS.labels("duplicate")

    # -- interactions ----------------------------------------------------------------------------------------

    async def handle_batch(self, batch: Sequence[Event]) -> None:
        """Apply a batch of interaction events and publish one recommendation per applied (or redelivered) event.

        Raises on a fault of the worker (store, state, scorer): the caller must not commit the batch.
        """
        settings = self.settings
        metrics.AGENT_BATCH.observe(len(batch))
        applied: list[tuple[Any, Event, bool]] = []
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
            # No try here: the event parsed, so a failure from now on is the worker's own (a store read error,
            # a stored state that does not decode: state.StateError). It must stop the worker before the batch
            # commits; dead-lettering would lose this valid event and every later one of this user.
            before = dirty[user][1] if user in dirty else decode_state(self.store.get(key, event))
            after, is_new = apply_event(before, interaction, history_size=settings.history_size,
                                        dedupe_window=settings.dedupe_window)
            # Duplicates are written too: after a hard crash the local RocksDB can hold writes whose changelog
            # records never left the producer; rewriting the state when their events come back puts it in the
            # changelog again, so a worker that later rebuilds from the changelog alone still has them.
            dirty[user] = (event, after)
            if is_new:
                self.judge(user, interaction.item_id)
                self.scorer.observe(history_items(before), interaction.item_id)   # reaches its fallback too
                self._applied.inc()
            else:
                self._duplicate.inc()
            applied.append((interaction, event, not is_new))
        for user, (event, state) in dirty.items():
            if state is None:
                self.store.delete(event.message.key, event)
            else:
                self.store.put(event.message.key, encode_state(state), event)
        if not applied:
            return
        # Coalesce: one request per user, from their newest state; every event of theirs gets the answer.
        # (a user erased later in the same batch is answered as a new user: nothing of theirs is kept)
        latest = {i.user_id: dirty[i.user_id][1] or new_state() for i, _, _ in applied}
        users = list(latest)
        answers = dict(zip(users, await self.score([self.request(u, latest[u]) for u in users])))
        for user, answer in answers.items():
            self.prequential.served(user, [i for i, _ in answer.items], answer.fallback)
        metrics.RECOMMENDED_ITEMS.set(len(self.prequential.stats.recommended))
        # one ranked list (with its reasons) per user, shared by all of their messages
        ranked = {u: messages.ranked(a, self.because(latest[u], a) if settings.explain else None)
                  for u, a in answers.items()}
        observe_latency = metrics.EVENT_LATENCY.observe
        for interaction, event, redelivered in applied:
            user = interaction.user_id
            msg = messages.recommendation(user, answers[user], trigger_event_id=interaction.event_id,
                                          event_timestamp=interaction.timestamp, redelivered=redelivered,
                                          items=ranked[user])
            await self.sink.send(self.topics[RECOMMENDATIONS], user.encode(), messages.encode(msg))
            produced = getattr(event.message, "timestamp", None)
            if produced:
                observe_latency(max(0.0, msg["generated_at"] - produced))
        metrics.RECOMMENDATIONS.inc(len(applied))

    def judge(self, user_id: str, item_id: str) -> None:
        """Prequential quality: the list last served to this user against the item they just chose."""
        judged = self.prequential.judge(user_id, item_id)
        if judged is not None:
            hit, gain, rr = judged
            metrics.PREQ_EVENTS.inc()
            metrics.PREQ_HITS.inc(hit)
            metrics.PREQ_NDCG.inc(gain)
            metrics.PREQ_RR.inc(rr)
            metrics.PREQ_FALLBACK.inc(int(self.prequential.last[user_id][1]))

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
        cutoff = request.get("inactive_before")
        if cutoff is not None:   # retention: only if the user has not acted since the sweep looked
            current = dirty[user][1] if user in dirty else decode_state(self.store.get(event.message.key, event))
            if current is not None and (current.get("last_seen") or 0) >= cutoff:
                log.info("erase request %s skipped: the user acted after its cut-off", request["request_id"])
                return
            metrics.EXPIRED_USERS.inc()
        dirty[user] = (event, None)
        self.prequential.forget(user)
        metrics.ERASURES.inc()
        log.info("erase request %s carried out", request["request_id"])   # the request id, not the user id

    def request(self, user_id: str, state: dict) -> ScoreRequest:
        frozen = self._unavailable_frozen
        if frozen is None:
            frozen = self._unavailable_frozen = frozenset(self.unavailable)
        seen = frozenset() if self.settings.recommend_seen else seen_items(state)
        return ScoreRequest(user_id, tuple(history_items(state)), self.settings.top_k,
                            Exclusion(seen, frozen), state["total"])

    def because(self, state: dict, answer: Scored) -> dict[str, list[dict[str, str]]]:
        """Why each item was recommended: the history item that co-occurred with it most (from the co-occurrence
        model, which every scorer keeps as its fallback), with its title when the catalog has one."""
        cooc = self.fallback if isinstance(self.fallback, CooccurrenceScorer) else None
        if cooc is None or not answer.items:
            return {}
        history = history_items(state)
        out: dict[str, list[dict[str, str]]] = {}
        for item, _ in answer.items:
            reasons = []
            for h in cooc.because(history, item):
                record = self.catalog.get(h)
                title = record.get("title") if isinstance(record, dict) else None
                reasons.append({"item_id": h, "title": title} if title else {"item_id": h})
            if reasons:
                out[item] = reasons
        return out

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
        because = self.because(state, answer) if self.settings.explain else None
        return 200, messages.recommendation(user_id, answer, trigger_event_id="", event_timestamp=state["last_seen"],
                                            because=because)

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
        if self._catalog_size is None:   # once: len() of a RocksDB table reads every key
            self._catalog_size = len(self.catalog)
        if item_id not in self.catalog:
            self._catalog_size += 1
        self.catalog[item_id] = record if record is not None else {"item_id": item_id, "deleted": True}
        self.apply_item(item_id, record)
        metrics.CATALOG_ITEMS.set(self._catalog_size)

    def apply_item(self, item_id: str, record: dict | None) -> None:
        """Every worker's view of the catalog: what not to recommend, and new items for the scorer (cold start)."""
        gone = bool(record is None or record.get("deleted") or not record.get("available", True))
        if gone != (item_id in self.unavailable):
            (self.unavailable.add if gone else self.unavailable.discard)(item_id)
            self._unavailable_frozen = None
        if hasattr(self.scorer, "on_item"):
            self.scorer.on_item(item_id, None if record is None or record.get("deleted") else record)

    # -- warm start ------------------------------------------------------------------------------------------

    async def warm_partitions(self, partitions: Iterable[int],
                              read: Callable[[int], Iterable[tuple[bytes, bytes | None]]], chunk: int = 500) -> int:
        """Teach the scorer the stored histories of the user_state partitions it has just gained; returns how many
        users were replayed. ``read(p)`` yields partition ``p``'s (key, stored state) pairs.

        Called after every recovery with the worker's active partitions (``app.py``), so partitions gained at a
        later rebalance warm the scorer too. Nothing is counted twice:
          * the caller runs this while the partitions' streams are still paused (after their table recovery,
            before Faust resumes fetching), so no event of theirs is applied while their histories replay;
          * a partition held since an earlier assignment is skipped: its events are in the counts already;
          * a partition this worker held before, lost (``forget_partitions`` noted each user's event count then)
            and has now gained back: only each user's events applied elsewhere since are taught.
        """
        users = 0
        for partition in sorted(set(partitions) - self.warmed):
            taught = self._taught.pop(partition, {})
            n = 0
            for key, raw in read(partition):
                state = decode_state(raw)
                if state is None:
                    continue
                items = history_items(state)
                new = min(state["total"] - taught.get(key, 0), len(items))
                for i in range(len(items) - max(new, 0), len(items)):
                    self.scorer.observe(items[:i], items[i])
                users += new > 0
                n += 1
                if n % chunk == 0:
                    await asyncio.sleep(0)   # the consumer's heartbeats and the web pages run meanwhile
            self.warmed.add(partition)
        metrics.WARMUP_USERS.inc(users)
        return users

    async def forget_partitions(self, partitions: Iterable[int],
                                read: Callable[[int], Iterable[tuple[bytes, bytes | None]]], chunk: int = 500) -> None:
        """Partitions revoked from this worker (their stores still readable): note how many events of each user the
        scorer has been taught, so that gaining the partition back teaches only what was applied elsewhere."""
        for partition in sorted(set(partitions) & self.warmed):
            taught: dict[bytes, int] = {}
            for n, (key, raw) in enumerate(read(partition), 1):
                state = decode_state(raw)
                if state is not None:
                    taught[key] = state["total"]
                if n % chunk == 0:
                    await asyncio.sleep(0)
            self._taught[partition] = taught
            self.warmed.discard(partition)
