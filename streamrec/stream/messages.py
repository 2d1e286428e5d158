"""Outgoing messages: recommendations and dead letters (pure builders; schemas in ``topics/schemas/``)."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from streamrec.scoring import Scored

RECOMMENDATION_VERSION = 2   # 2: items may carry "because" (the history items behind them); readers accept 1 and 2
DEAD_LETTER_VERSION = 1


def ranked(scored: Scored, because: dict[str, list[dict[str, str]]] | None = None) -> list[dict[str, Any]]:
    """The message's ``items``: build once per answer when several events of a user share it.

    ``because``: item id -> its reasons, each ``{"item_id": history item, "title": ...}`` (title when known)."""
    items = [{"item_id": i, "score": round(float(s), 6), "rank": r} for r, (i, s) in enumerate(scored.items, start=1)]
    if because:
        for it in items:
            reasons = because.get(it["item_id"])
            if reasons:
                it["because"] = reasons
    return items


def recommendation(user_id: str, scored: Scored, *, trigger_event_id: str, event_timestamp: float,
                   redelivered: bool = False, now: float | None = None,
                   because: dict[str, list[dict[str, str]]] | None = None,
                   items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``items``: the ranked list already built by ``ranked`` (else it is built here, with ``because``)."""
    scorer: dict[str, Any] = {"name": scored.scorer, "version": scored.version, "fallback": scored.fallback}
    if scored.fallback_reason:
        scorer["fallback_reason"] = scored.fallback_reason
    msg = {
        "schema_version": RECOMMENDATION_VERSION,
        "user_id": user_id,
        "items": ranked(scored, because) if items is None else items,
        "scorer": scorer,
        "trigger_event_id": trigger_event_id,
        "event_timestamp": event_timestamp,
        "generated_at": time.time() if now is None else now,
    }
    if redelivered:
        msg["redelivered"] = True
    return msg


def dead_letter(*, reason: str, error: str, source_topic: str, partition: int | None, offset: int | None,
                key: bytes | None, value: bytes | None, now: float | None = None,
                max_value_bytes: int | None = None) -> dict[str, Any]:
    """``max_value_bytes``: keep at most this many bytes of the original (a dead letter must itself fit in a Kafka
    message; the complete original stays at ``source_topic``/``source_partition``/``source_offset``)."""
    value = value or b""
    msg = {
        "schema_version": DEAD_LETTER_VERSION,
        "reason": reason,
        "error": error,
        "source_topic": source_topic,
        "source_partition": partition,
        "source_offset": offset,
        "original_key_b64": None if key is None else base64.b64encode(key[:1024]).decode(),
        "original_value_b64": base64.b64encode(value[:max_value_bytes] if max_value_bytes else value).decode(),
        "received_at": time.time() if now is None else now,
    }
    if max_value_bytes and len(value) > max_value_bytes:
        msg["truncated"] = True
        msg["original_size"] = len(value)
    return msg


def encode(msg: dict[str, Any]) -> bytes:
    return orjson.dumps(msg)   # compact UTF-8, several times faster than json on the per-event path
