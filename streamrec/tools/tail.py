"""Consumer-side tool (kafka-python): follow ``recommendations`` (or the dead-letter topic) and print readably."""

from __future__ import annotations

import json
import time
from typing import Callable, Iterator

from streamrec.config import Settings


def consumer(settings: Settings, topic: str, *, from_beginning: bool, group: str | None = None, **kw):
    from kafka import KafkaConsumer
    return KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap.split(","), group_id=group,
                         auto_offset_reset="earliest" if from_beginning else "latest", enable_auto_commit=group is not None,
                         consumer_timeout_ms=200, client_id="streamrec-tail", **settings.kafka_python_security(), **kw)


def follow(settings: Settings, topic: str, *, from_beginning: bool = False, max_messages: int = 0,
           timeout_s: float = 0.0, group: str | None = None) -> Iterator[tuple[bytes | None, dict]]:
    """Yield (key, decoded message) until ``max_messages`` or ``timeout_s`` of silence (0 = forever)."""
    c = consumer(settings, topic, from_beginning=from_beginning, group=group)
    n = 0
    last = time.monotonic()
    try:
        while True:
            got = False
            for record in c:
                got = True
                last = time.monotonic()
                try:
                    value = json.loads(record.value)
                except ValueError:
                    value = {"undecodable": repr(record.value[:200])}
                yield record.key, value
                n += 1
                if max_messages and n >= max_messages:
                    return
            if not got and timeout_s and time.monotonic() - last > timeout_s:
                return
    finally:
        c.close()


def format_recommendation(msg: dict, titles: dict[str, str] | None = None) -> str:
    titles = titles or {}
    scorer = msg.get("scorer", {})
    flag = " FALLBACK" if scorer.get("fallback") else ""
    trigger = msg.get("trigger_event_id")
    head = (f"user {msg.get('user_id')}  {f'after event {trigger}' if trigger else 'on request'}  "
            f"[{scorer.get('name')} {scorer.get('version')}{flag}]")
    lines = [head]
    for it in msg.get("items", []):
        title = titles.get(it["item_id"])
        line = f"  {it['rank']:>2}. {it['item_id']:<12} {it['score']:>9.4f}" + (f"  {title[:60]}" if title else "")
        for why in it.get("because", ()):   # schema_version 2; absent in version 1 messages
            name = why.get("title") or titles.get(why["item_id"]) or why["item_id"]
            line += f"  (because: {name[:40]})"
        lines.append(line)
    return "\n".join(lines)


def format_dead_letter(msg: dict) -> str:
    return (f"{msg.get('source_topic')}[{msg.get('source_partition')}]@{msg.get('source_offset')} "
            f"{msg.get('error')}: {msg.get('reason')}")


def printer(kind: str, titles: dict[str, str] | None = None) -> Callable[[dict], str]:
    return format_dead_letter if kind == "dlq" else (lambda m: format_recommendation(m, titles))
