"""Worker logging: repeated warnings and errors rate-limited to one line plus a count, optional JSON lines.

A 26-second broker outage used to write ~47,000 ERROR lines (every client reconnect attempt), and every
dead-lettered event a WARNING line of its own. What an operator needs from the log is *that* it happens, how
often, and one example; the per-event detail lives in the metrics (``streamrec_dead_letters_total{reason}``) and
in the dead-letter topic. So a message is keyed by its logger, level and *template* (the format string before
its arguments are filled in): the first one in each interval passes, the rest are counted, and one summary line
says how many were held back.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Callable

import orjson

_SUMMARY = "ratelimit_summary"   # LogRecord attribute of our own summary lines (always pass)
_installed: "weakref.WeakSet[RateLimitFilter]" = weakref.WeakSet()


class RateLimitFilter(logging.Filter):
    """Passes the first record of each (logger, level, template) per ``interval_s``, counts the rest.

    Applies to levels from ``min_level`` up to, not including, CRITICAL (a fatal stop is always logged). Attach it
    to handlers: a handler filter sees the records of every logger, children included. One instance can serve
    several handlers; it decides once per record.
    """

    def __init__(self, interval_s: float = 30.0, min_level: int = logging.WARNING, max_keys: int = 2000,
                 clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[logging.LogRecord], None] | None = None) -> None:
        super().__init__()
        self.interval_s, self.min_level, self.max_keys, self.clock = interval_s, min_level, max_keys, clock
        self.emit = emit or (lambda rec: logging.getLogger(rec.name).handle(rec))
        self._windows: dict[tuple, list] = {}   # key -> [window start, suppressed, example record]
        self._lock = threading.Lock()
        _installed.add(self)

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_ratelimit_pass", None)
        if decided is not None:
            return decided
        record._ratelimit_pass = self._decide(record)
        return record._ratelimit_pass

    def _decide(self, record: logging.LogRecord) -> bool:
        if (getattr(record, _SUMMARY, False) or self.interval_s <= 0
                or not self.min_level <= record.levelno < logging.CRITICAL):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        due: list[logging.LogRecord] = []
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] < self.interval_s:
                window[1] += 1
                return False
            if window is not None and window[1]:
                due.append(self._summary(key, window, now))
            if len(self._windows) >= self.max_keys:   # f-string messages make a key each: forget idle ones
                self._expire(now, due)
            self._windows[key] = [now, 0, record]
        for summary in due:
            self.emit(summary)
        return True

    def flush(self) -> int:
        """Log the summaries of windows that have ended (called periodically); returns how many."""
        now, due = self.clock(), []
        with self._lock:
            self._expire(now, due)
        for summary in due:
            self.emit(summary)
        return len(due)

    def _expire(self, now: float, due: list) -> None:
        for key, window in list(self._windows.items()):
            if now - window[0] >= self.interval_s:
                if window[1]:
                    due.append(self._summary(key, window, now))
                del self._windows[key]

    def _summary(self, key: tuple, window: list, now: float) -> logging.LogRecord:
        name, level, template = key
        example: logging.LogRecord = window[2]
        rec = logging.LogRecord(name, level, example.pathname, example.lineno,
                                "%d more like this in the last %.0f s (shown once per %.0f s): %s",
                                (window[1], now - window[0], self.interval_s, template[:300]), None)
        setattr(rec, _SUMMARY, True)
        rec.suppressed = window[1]
        return rec


def flush_all() -> None:
    for f in list(_installed):
        f.flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception, + suppressed count of a summary)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if getattr(record, _SUMMARY, False):
            out["suppressed"] = record.suppressed
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def install(root: logging.Logger, *, interval_s: float, fmt: str) -> RateLimitFilter:
    """Rate-limit (and optionally JSON-format) every handler of the root logger."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: expected text or json")
    limiter = RateLimitFilter(interval_s)
    for handler in root.handlers:
        handler.addFilter(limiter)
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
    return limiter
