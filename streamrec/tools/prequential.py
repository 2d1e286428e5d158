"""``streamrec prequential FILE``: replay a data file through the worker's own pipeline, offline, and report the
quality of what it would have served (test, then train: every event judges the list last served to its user).

The events go through ``stream.pipeline.Pipeline`` exactly as in the worker (parse, dedupe/apply, the real scorer
with online learning, coalesced per batch), with a dict as the user_state table and no Kafka: the same numbers
the worker exports as ``streamrec_prequential_*`` metrics, reproducible from a file.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tqdm import tqdm

from streamrec.config import Settings
from streamrec.events import Interaction
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.prequential import PrequentialStats


@dataclass
class _Message:
    key: bytes
    value: bytes
    topic: str
    partition: int = 0
    offset: int = -1   # not from Kafka


@dataclass
class _Event:
    message: _Message


class _MemoryStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key, event=None):
        return self.data.get(key)

    def put(self, key, value, event):
        self.data[key] = value


class _CountingSink:
    def __init__(self) -> None:
        self.messages = 0

    async def send(self, topic, key, value):
        self.messages += 1


async def _run(settings: Settings, scorer, events: Sequence[Interaction], batch: int, progress: bool,
               warmup: int, retrain: Callable[[Sequence[Interaction]], Any] | None, retrain_every: int) -> dict:
    sink = _CountingSink()
    pipeline = Pipeline(settings, scorer, _MemoryStore(), sink)
    topic = settings.topic("interactions")
    started = time.perf_counter()
    bar = tqdm(total=len(events), unit="ev", desc="prequential", disable=not progress, mininterval=0.5)
    try:
        # The warm-up part is applied (state, online learning, lists served) but not judged.
        done, since_retrain, retrains = 0, 0, []
        for judging, part in ((False, events[:warmup]), (True, events[warmup:])):
            pipeline.prequential.stats = PrequentialStats()
            for start in range(0, len(part), batch):
                chunk = part[start:start + batch]
                await pipeline.handle_batch([_Event(_Message(e.user_id.encode(), e.to_bytes(), topic))
                                             for e in chunk])
                bar.update(len(chunk))
                done += len(chunk)
                since_retrain += len(chunk) if judging else 0
                if retrain is not None and retrain_every and since_retrain >= retrain_every:
                    # Periodic retraining: a new model from everything streamed so far, swapped in between
                    # batches (what a deployment does with `streamrec train --from-kafka --init-from`).
                    judged = pipeline.prequential.stats.report(settings.top_k)
                    old, pipeline.scorer = pipeline.scorer, retrain(events[:done])
                    if old is not pipeline.fallback:
                        await _close(old)
                    retrains.append({"after_events": done, "judged_so_far": judged["events"],
                                     f"NDCG@{settings.top_k}_so_far": judged[f"NDCG@{settings.top_k}"]})
                    since_retrain = 0
    finally:
        bar.close()
        await _close(pipeline.scorer)
    report = pipeline.prequential.stats.report(settings.top_k)
    report.update(scorer=getattr(scorer, "name", type(scorer).__name__), replayed=len(events), warmup=warmup,
                  batch=batch, messages=sink.messages, seconds=round(time.perf_counter() - started, 1))
    if retrain is not None:
        report["retrains"] = retrains
    return report


async def _close(scorer) -> None:
    """Stop a scorer that has a close() (the micro-batcher's is a coroutine)."""
    closing = scorer.close() if hasattr(scorer, "close") else None
    if inspect.isawaitable(closing):
        await closing


def prequential(settings: Settings, events: Sequence[Interaction], *, batch: int = 64, scorer=None,
                progress: bool = True, warmup: int = 0,
                retrain: Callable[[Sequence[Interaction]], Any] | None = None, retrain_every: int = 0) -> dict:
    """Replay ``events`` (in the given order) through a fresh pipeline; return the prequential report over the
    events after the first ``warmup`` (those are applied but not judged: e.g. the part a model was trained on).

    ``retrain(events so far) -> scorer``, called after every ``retrain_every`` judged events, replaces the scorer
    between two batches (the co-occurrence fallback and its online counts are kept)."""
    if scorer is None:
        from streamrec.serve.build import build_scorer
        scorer = build_scorer(settings)
    return asyncio.run(_run(settings, scorer, events, batch, progress, warmup, retrain, retrain_every))
