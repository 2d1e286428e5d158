"""User erasure requests: the record on the ``user-erasure`` topic, built by ``streamrec erase`` and checked by the
worker (pure; the rules agree with ``topics/schemas/erasure.schema.json``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from streamrec.events import MAX_ID_LEN, InvalidEvent

SCHEMA_VERSION = 1
_ALLOWED = frozenset({"schema_version", "request_id", "user_id", "requested_at"})


def erase_request(user_id: str, request_id: str | None = None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "request_id": request_id or uuid.uuid4().hex, "user_id": user_id,
            "requested_at": time.time()}


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
    t = record.get("requested_at", 0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
        raise InvalidEvent("schema", "field 'requested_at': expected a finite number >= 0")
    return record
