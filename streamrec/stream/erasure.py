"""User erasure requests: the record on the ``user-erasure`` topic, built by ``streamrec erase`` and checked by the
worker (pure; the rules agree with ``topics/schemas/erasure.schema.json``)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable, Iterator

import orjson

from streamrec.events import MAX_ID_LEN, InvalidEvent

SCHEMA_VERSION = 1
_ALLOWED = frozenset({"schema_version", "request_id", "user_id", "requested_at", "inactive_before"})


def erase_request(user_id: str, request_id: str | None = None, inactive_before: float | None = None
                  ) -> dict[str, Any]:
    """``inactive_before``: erase only if the user's last event is older than this (retention of inactive users:
    a user who acted after the request was made keeps their state)."""
    request = {"schema_version": SCHEMA_VERSION, "request_id": request_id or uuid.uuid4().hex, "user_id": user_id,
               "requested_at": time.time()}
    if inactive_before is not None:
        request["inactive_before"] = inactive_before
    return request


def expired_users(states: Iterable[tuple[bytes, dict | None]], now: float, retention_s: float
                  ) -> Iterator[tuple[str, float]]:
    """(user id, cut-off) for each stored state whose last event is older than ``retention_s`` before ``now``."""
    cutoff = now - retention_s
    for key, state in states:
        last = None if state is None else state.get("last_seen")
        if last is not None and last < cutoff:
            yield key.decode(), cutoff


def parse_erase_request(raw: bytes | None) -> dict[str, Any]:
    """The request in ``raw``, or ``InvalidEvent(kind, reason)`` (the same kinds as interaction events)."""
    if raw is None:
        raise InvalidEvent("schema", "erase request is empty (null)")
    if len(raw) > 4096:
        raise InvalidEvent("too_large", f"erase request is {len(raw)} bytes, limit is 4096")
    try:
        record = orjson.loads(raw)
    except (ValueError, RecursionError) as exc:   # orjson's errors (bad UTF-8 too) are ValueErrors
        raise InvalidEvent("not_json", f"erase request is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise InvalidEvent("schema", f"erase request must be a JSON object, got {type(record).__name__}")
    unknown = set(record) - _ALLOWED
    if unknown:
        raise InvalidEvent("schema", f"unknown field(s): {', '.join(sorted(unknown))}")
    if record.get("schema_version") != SCHEMA_VERSION or isinstance(record.get("schema_version"), bool):
        raise InvalidEvent("schema", f"field 'schema_version': expected {SCHEMA_VERSION}")
    for name in ("request_id", "user_id"):
        v = record.get(name)
        if not isinstance(v, str) or not 1 <= len(v) <= MAX_ID_LEN:
            raise InvalidEvent("schema", f"field '{name}': expected a string of 1..{MAX_ID_LEN} characters")
    for name in ("requested_at", "inactive_before"):
        t = record.get(name, 0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            raise InvalidEvent("schema", f"field '{name}': expected a finite number >= 0")
    return record
