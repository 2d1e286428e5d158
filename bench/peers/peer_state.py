"""The state work every peer in ``bench/e2e_bench.py`` does per event, in plain Python (no project imports: the
quixstreams app runs in its own venv).

The same as the streamrec worker's state without its scorer: the last 50 items, a counter, the last 256 event ids
(a redelivered id leaves the state as it was), and one JSON-able answer per event.
"""

from __future__ import annotations

import time

HISTORY, DEDUPE = 50, 256


def step(state: dict | None, event: dict) -> dict:
    state = state or {"items": [], "total": 0, "ids": []}
    if event["event_id"] in state["ids"]:
        return state
    state["items"] = (state["items"] + [event["item_id"]])[-HISTORY:]
    state["ids"] = (state["ids"] + [event["event_id"]])[-DEDUPE:]
    state["total"] += 1
    return state


def answer(event: dict) -> dict:
    return {"schema_version": 1, "user_id": event["user_id"], "items": [],
            "scorer": {"name": "none", "version": "peer", "fallback": False},
            "trigger_event_id": event["event_id"], "event_timestamp": event["timestamp"], "generated_at": time.time()}
