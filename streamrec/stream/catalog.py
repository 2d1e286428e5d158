"""The item catalog: item records from the compacted ``items`` topic and the data sets' metadata (pure)."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
_ALLOWED = frozenset({"schema_version", "item_id", "title", "description", "categories", "available", "updated_at"})


def validate_item(record: Any) -> dict[str, Any]:
    """Check an item record against ``item.schema.json``'s rules; raise ValueError with the reason."""
    if not isinstance(record, dict):
        raise ValueError(f"item record must be an object, got {type(record).__name__}")
    unknown = set(record) - _ALLOWED
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if record.get("schema_version") != SCHEMA_VERSION or isinstance(record.get("schema_version"), bool):
        raise ValueError(f"schema_version must be {SCHEMA_VERSION}")
    for name, limit in (("item_id", 128), ("title", 1000)):
        v = record.get(name)
        if not isinstance(v, str) or not 1 <= len(v) <= limit:
            raise ValueError(f"field '{name}' must be a string of 1..{limit} characters")
    if "description" in record and not (isinstance(record["description"], str)
                                        and len(record["description"]) <= 10000):
        raise ValueError("field 'description' must be a string of at most 10000 characters")
    cats = record.get("categories", [])
    if not isinstance(cats, list) or len(cats) > 50 or not all(isinstance(c, str) and len(c) <= 200 for c in cats):
        raise ValueError("field 'categories' must be a list of at most 50 strings of at most 200 characters")
    if "available" in record and not isinstance(record["available"], bool):
        raise ValueError("field 'available' must be a boolean")
    if "updated_at" in record:
        t = record["updated_at"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ValueError("field 'updated_at' must be a number >= 0")
    return record


def item_record(item_id: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "item_id": item_id, "title": title, **extra}


def item_text(record: dict[str, Any] | None) -> str:
    """The text the sentence encoder embeds for an item."""
    if not record:
        return ""
    parts = [record.get("title", "")]
    if record.get("categories"):
        parts.append(", ".join(record["categories"]))
    if record.get("description"):
        parts.append(record["description"][:500])
    return ". ".join(p for p in parts if p)
