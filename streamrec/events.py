"""Interaction events: parse and validate raw Kafka bytes (pure, no I/O).

The JSON Schema in ``topics/schemas/interaction.schema.json`` is the contract; this module is a hand-written
validator for the same rules because it runs once per event on the hot path (jsonschema costs ~20x more).
``tests/unit/test_events.py`` checks that both agree on a corpus of good and bad events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA_VERSION = 1
EVENT_TYPES = ("view", "click", "purchase", "rating")
MAX_ID_LEN = 128
MAX_TIMESTAMP = 1e11
MAX_PROPERTIES = 32
_ALLOWED_FIELDS = frozenset(
    {"schema_version", "event_id", "user_id", "item_id", "event_type", "timestamp", "value", "properties"})


class InvalidEvent(ValueError):
    """Raised for input that must go to the dead-letter topic. ``kind`` is the dead-letter ``error`` field."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Interaction:
    event_id: str
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    value: float | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "event_id": self.event_id, "user_id": self.user_id,
                             "item_id": self.item_id, "event_type": self.event_type, "timestamp": self.timestamp}
        if self.value is not None:
            d["value"] = self.value
        if self.properties:
            d["properties"] = self.properties
        return d

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())


def parse_event(raw: bytes | None, max_bytes: int = 16384) -> Interaction:
    """Bytes from the ``interactions`` topic -> Interaction, or InvalidEvent with a precise reason."""
    if raw is None:
        raise InvalidEvent("schema", "message value is empty (null)")
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"message is {len(raw)} bytes, limit is {max_bytes}")
    try:
        obj = orjson.loads(raw)   # rejects invalid UTF-8, NaN/Infinity and integers beyond 64 bits too
    except (ValueError, RecursionError) as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf_exc:
            raise InvalidEvent("not_utf8", f"message is not UTF-8: {utf_exc}") from None
        raise InvalidEvent("not_json", f"message is not JSON: {exc}") from None
    return validate_event(obj)


def validate_event(obj: Any) -> Interaction:
    if not isinstance(obj, dict):
        raise InvalidEvent("schema", f"event must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _ALLOWED_FIELDS
    if unknown:
        raise InvalidEvent("schema", f"unknown field(s): {', '.join(sorted(unknown))}")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidEvent("schema", f"field 'schema_version': expected {SCHEMA_VERSION}, got {version!r}")
    event_id = _identifier(obj, "event_id")
    user_id = _identifier(obj, "user_id")
    item_id = _identifier(obj, "item_id")
    event_type = obj.get("event_type")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent("schema", f"field 'event_type': expected one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
    timestamp = _number(obj, "timestamp", required=True, low=0.0, high=MAX_TIMESTAMP)
    value = _number(obj, "value", required=event_type == "rating", low=0.0, high=10.0)
    properties = obj.get("properties", {})
    if not isinstance(properties, dict):
        raise InvalidEvent("schema", "field 'properties': expected an object")
    if len(properties) > MAX_PROPERTIES:
        raise InvalidEvent("schema", f"field 'properties': {len(properties)} keys, limit is {MAX_PROPERTIES}")
    return Interaction(event_id, user_id, item_id, event_type, timestamp, value, properties)


def _identifier(obj: dict, name: str) -> str:
    if name not in obj:
        raise InvalidEvent("schema", f"field '{name}': missing")
    v = obj[name]
    if not isinstance(v, str):
        raise InvalidEvent("schema", f"field '{name}': expected a string, got {type(v).__name__}")
    if not 1 <= len(v) <= MAX_ID_LEN:
        raise InvalidEvent("schema", f"field '{name}': length {len(v)} outside 1..{MAX_ID_LEN}")
    return v


def _number(obj: dict, name: str, *, required: bool, low: float, high: float) -> float | None:
    if name not in obj:
        if required:
            raise InvalidEvent("schema", f"field '{name}': missing")
        return None
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v):
        raise InvalidEvent("schema", f"field '{name}': expected a finite number, got {v!r}")
    if not low <= v <= high:
        raise InvalidEvent("schema", f"field '{name}': {v} outside {low:g}..{high:g}")
    return float(v)


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:   # an int too large for a float (JSON allows 1000-digit integers)
        return False
