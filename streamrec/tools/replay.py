"""Producer-side tools (kafka-python): replay a data file into ``interactions``, load a catalog into ``items``,
request user erasures on ``user-erasure``."""

from __future__ import annotations

import time
from typing import Iterable

from tqdm import tqdm

from streamrec.stream.catalog import item_record
from streamrec.stream.erasure import erase_request
from streamrec.config import Settings
from streamrec.events import Interaction
from streamrec.stream.messages import encode
from streamrec.stream.topics import ERASURE, INTERACTIONS, ITEMS


def producer(settings: Settings, **kw):
    from kafka import KafkaProducer
    opts = dict(bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all", linger_ms=20,
                batch_size=256 * 1024, retries=5, client_id="streamrec-replay")
    opts.update(kw)
    return KafkaProducer(**opts, **settings.kafka_python_security())


def replay(settings: Settings, events: Iterable[Interaction], *, rate: float = 0.0, total: int | None = None,
           progress: bool = True, prod=None) -> int:
    """Produce events keyed by user id, in the given (timestamp) order. ``rate`` = events/s, 0 = as fast as possible.

    Returns the number of events acknowledged by the broker; raises if any send failed (nothing is lost silently).
    """
    own = prod is None
    prod = prod or producer(settings)
    topic = settings.topic(INTERACTIONS)
    failures: list[BaseException] = []
    sent = 0
    start = time.perf_counter()
    bar = tqdm(total=total, unit="ev", desc=f"replay -> {topic}", disable=not progress, mininterval=0.5)
    try:
        for e in events:
            if rate > 0:   # pace against the start time so that short sleeps don't add up to drift
                delay = start + sent / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            fut = prod.send(topic, key=e.user_id.encode(), value=e.to_bytes())
            fut.add_errback(failures.append)
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
        prod.flush()
        bar.update(sent % 1000)
    finally:
        bar.close()
        if own:
            prod.close()
    if failures:
        raise RuntimeError(f"{len(failures)} of {sent} events were not acknowledged: {failures[0]!r}")
    return sent


def load_catalog(settings: Settings, titles: dict[str, str], *, progress: bool = True, prod=None) -> int:
    own = prod is None
    prod = prod or producer(settings)
    topic = settings.topic(ITEMS)
    failures: list[BaseException] = []
    for item_id, title in tqdm(titles.items(), unit="item", desc=f"catalog -> {topic}", disable=not progress):
        prod.send(topic, key=item_id.encode(), value=encode(item_record(item_id, title[:1000] or item_id))
                  ).add_errback(failures.append)
    prod.flush()
    if own:
        prod.close()
    if failures:
        raise RuntimeError(f"{len(failures)} item records were not acknowledged: {failures[0]!r}")
    return len(titles)


def request_erasure(settings: Settings, users: list[str], request_id: str | None = None, *, prod=None) -> list[dict]:
    """Produce one erase request per user, keyed by the user id; returns the requests once the broker has them."""
    own = prod is None
    prod = prod or producer(settings, linger_ms=0)
    requests = [erase_request(u, f"{request_id}-{u}" if request_id and len(users) > 1 else request_id) for u in users]
    try:
        futures = [prod.send(settings.topic(ERASURE), key=r["user_id"].encode(), value=encode(r)) for r in requests]
        prod.flush()
        for f in futures:
            f.get(timeout=30)   # raises when the broker did not take it: an erasure is never dropped silently
    finally:
        if own:
            prod.close()
    return requests
