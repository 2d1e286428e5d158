"""Per-user state and its incremental update (pure; the Faust table in ``app.py`` stores it in RocksDB).

A state is a plain JSON-able dict so that the table's changelog stays readable and schema changes stay cheap:

    {"history": [[item_id, event_type, timestamp], ...],   # oldest first, at most history_size
     "counts": {"view": 3, "purchase": 1, ...},            # lifetime events applied, by type
     "total": 4, "first_seen": 1.7e9, "last_seen": 1.7e9,
     "recent_event_ids": ["e1", "e2", ...],                 # at most dedupe_window, oldest first
     "v": 2}                                                # STATE_VERSION: the format this state is in

Stored states outlive the code that wrote them (RocksDB volumes, the compacted changelog), so every stored state
says which format it is in and ``decode_state`` migrates older formats on read. A state it cannot read is a fault
of the worker's own data, not bad input: ``StateError``, which stops the worker (``app.fatal``) before the batch
commits, instead of sending the user's valid events to the dead-letter topic one after another.

Formats: 1 = the original, unversioned dict (no "v" key); 2 = the same fields plus "v".
"""

from __future__ import annotations

from typing import Any

import orjson

from streamrec.events import Interaction

UserState = dict[str, Any]
STATE_VERSION = 2
_FIELDS = ("history", "counts", "total", "first_seen", "last_seen", "recent_event_ids")


class StateError(RuntimeError):
    """A stored user state this code cannot read: corrupt bytes, a newer format, or missing fields."""


def new_state() -> UserState:
    return {"history": [], "counts": {}, "total": 0, "first_seen": None, "last_seen": None, "recent_event_ids": [],
            "v": STATE_VERSION}


def is_duplicate(state: UserState, event: Interaction) -> bool:
    return event.event_id in state["recent_event_ids"]


def apply_event(state: UserState | None, event: Interaction, *, history_size: int = 50,
                dedupe_window: int = 256) -> tuple[UserState, bool]:
    """Return (new state, applied). A redelivered event (same event_id seen recently) leaves the state unchanged.

    The input state is not mutated: a failure half-way through must not leave a half-applied state in the table.
    History is kept in timestamp order, so a late event slots in where it happened instead of looking like the
    newest interest.
    """
    state = new_state() if state is None else state
    if is_duplicate(state, event):
        return state, False
    history = [list(h) for h in state["history"]]
    entry = [event.item_id, event.event_type, event.timestamp]
    pos = len(history)
    while pos > 0 and history[pos - 1][2] > event.timestamp:
        pos -= 1
    history.insert(pos, entry)
    if len(history) > history_size:
        history = history[len(history) - history_size:]   # not [-n:]: n == 0 would keep everything
    counts = dict(state["counts"])
    counts[event.event_type] = counts.get(event.event_type, 0) + 1
    ids = state["recent_event_ids"] + [event.event_id]
    if len(ids) > dedupe_window:
        ids = ids[len(ids) - dedupe_window:]
    first = state["first_seen"]
    last = state["last_seen"]
    return {
        "history": history,
        "counts": counts,
        "total": state["total"] + 1,
        "first_seen": event.timestamp if first is None else min(first, event.timestamp),
        "last_seen": event.timestamp if last is None else max(last, event.timestamp),
        "recent_event_ids": ids,
        "v": STATE_VERSION,
    }, True


def history_items(state: UserState | None) -> list[str]:
    """Item ids in time order (oldest first), repeats kept: what a sequence model reads."""
    return [] if state is None else [h[0] for h in state["history"]]


def seen_items(state: UserState | None) -> set[str]:
    return set(history_items(state))


def encode_state(state: UserState) -> bytes:
    """The table's stored form (RocksDB value and changelog record): compact JSON."""
    return orjson.dumps(state)


def _from_v1(state: UserState) -> UserState:
    return {**state, "v": 2}


# version -> the function that lifts a state of that version by one; decode_state chains them
_MIGRATIONS = {1: _from_v1}


def decode_state(raw: bytes | None) -> UserState | None:
    """The stored bytes as a current-format state (older formats migrated); ``StateError`` when unreadable."""
    if raw is None:
        return None
    try:
        state = orjson.loads(raw)
    except ValueError as exc:   # orjson.JSONDecodeError is a ValueError
        raise StateError(f"stored user state is not JSON ({exc}): {bytes(raw[:80])!r}") from exc
    if not isinstance(state, dict):
        raise StateError(f"stored user state is a {type(state).__name__}, not an object: {bytes(raw[:80])!r}")
    version = state.get("v", 1)
    if not isinstance(version, int) or not 1 <= version <= STATE_VERSION:
        raise StateError(f"stored user state has format version {version!r}; this worker reads 1..{STATE_VERSION}"
                         " (a newer release wrote it?)")
    while version < STATE_VERSION:
        state = _MIGRATIONS[version](state)
        version = state["v"]
    missing = [f for f in _FIELDS if f not in state]
    if missing:
        raise StateError(f"stored user state (format {version}) lacks {', '.join(missing)}")
    return state
