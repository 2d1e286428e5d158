"""Training data from the stream itself: the ``interactions`` topic read from its beginning to its current end.

``streamrec train --from-kafka`` uses it to learn from what the workers have seen (with ``--init-from`` the
previous model continues on it). Records that are not valid interaction events are skipped and counted: they are
in the dead-letter topic already, with their reasons.
"""

from __future__ import annotations

import logging
import time

from streamrec.config import Settings
from streamrec.events import Interaction, InvalidEvent, parse_event

log = logging.getLogger(__name__)


def read_interactions(settings: Settings, timeout_s: float = 60.0) -> tuple[list[Interaction], int]:
    """(every valid event of the interactions topic up to its end offsets now, in time order; skipped records)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic("interactions")
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","), group_id=None,
                             enable_auto_commit=False, client_id="streamrec-train",
                             **settings.kafka_python_security())
    events: list[Interaction] = []
    skipped = 0
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} does not exist (streamrec topics apply)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s:.0f} s")
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    if r.offset >= end[TopicPartition(r.topic, r.partition)]:
                        continue   # arrived after we looked: the next training run gets it
                    try:
                        events.append(parse_event(r.value, settings.max_event_bytes))
                    except InvalidEvent:
                        skipped += 1
    finally:
        consumer.close()
    events.sort(key=lambda e: e.timestamp)
    log.info("read %d events from %s (%d invalid records skipped)", len(events), topic, skipped)
    return events, skipped
