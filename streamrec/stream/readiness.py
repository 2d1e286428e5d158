"""Liveness and readiness of a worker, as Kubernetes and compose probe them.

* **Live** (``/health``): the process and its event loop answer. Nothing else: restarting a worker because the
  broker is down would not bring the broker back, it would only throw away the warm scorer.
* **Ready** (``/ready``): the worker can do its job right now -- its tables are recovered, its consumer group is
  not rebalancing, and the broker answered a metadata request within ``ready_broker_timeout_s``. A worker that is
  not ready is taken out of the HTTP service (lookups go to other replicas) but keeps running; it becomes ready
  again by itself when the condition clears.

The broker check is a probe the worker makes itself every few seconds (``app.probe_broker``): the consumer's
own fetches cannot tell "no traffic" from "no broker".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Readiness:
    broker_timeout_s: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    last_broker_ok: float | None = None
    last_broker_error: str = ""

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    def broker_answered(self) -> None:
        self.last_broker_ok, self.last_broker_error = self.clock(), ""

    def broker_failed(self, error: str) -> None:
        self.last_broker_error = error[:300]

    def broker_silence_s(self) -> float:
        """Seconds since the broker last answered (since start when it never has)."""
        return self.clock() - (self.last_broker_ok if self.last_broker_ok is not None else self.started)

    def check(self, *, recovered: bool, rebalancing: bool) -> tuple[bool, dict]:
        """(ready, the JSON body of ``/ready``: each condition and, when not ready, the reasons)."""
        silence = self.broker_silence_s()
        broker_ok = self.last_broker_ok is not None and silence <= self.broker_timeout_s
        reasons = []
        if not recovered:
            reasons.append("tables are recovering")
        if rebalancing:
            reasons.append("the consumer group is rebalancing")
        if not broker_ok:
            why = (f"no answer from the broker for {silence:.0f} s" if self.last_broker_ok is not None
                   else "the broker has not answered yet")
            reasons.append(why + (f" ({self.last_broker_error})" if self.last_broker_error else ""))
        body = {"ready": not reasons, "recovered": recovered, "rebalancing": rebalancing,
                "broker_reachable": broker_ok, "broker_silence_s": round(silence, 1)}
        if reasons:
            body["reasons"] = reasons
        return not reasons, body
