"""Log rate limiting: one line per message template per interval, then a count; JSON lines."""

from __future__ import annotations

import io
import json
import logging

import pytest

from streamrec.stream.logs import JsonFormatter, RateLimitFilter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup():
    """A logger with a rate-limited handler writing to a buffer; returns (logger, clock, lines, filter)."""
    clock, buf = Clock(), io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    limiter = RateLimitFilter(interval_s=10, clock=clock)
    handler.addFilter(limiter)
    logger = logging.getLogger("test.logs.flood")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.DEBUG
    yield logger, clock, lambda: buf.getvalue().splitlines(), limiter
    logger.handlers = []


def test_a_flood_becomes_one_line_and_a_count(setup):
    logger, clock, lines, _ = setup
    for i in range(1000):                  # the same template with different arguments, in one interval
        logger.error("Unable connect to node with id %s: %r", i % 3, "refused")
        clock.t += 0.005
    assert lines() == ["ERROR test.logs.flood Unable connect to node with id 0: 'refused'"]
    clock.t = 12
    logger.error("Unable connect to node with id %s: %r", 1, "refused")
    assert lines()[1:] == [
        "ERROR test.logs.flood 999 more like this in the last 12 s (shown once per 10 s): "
        "Unable connect to node with id %s: %r",
        "ERROR test.logs.flood Unable connect to node with id 1: 'refused'"]


def test_flush_reports_the_count_after_the_flood_stopped(setup):
    logger, clock, lines, limiter = setup
    for _ in range(5):
        logger.warning("dead-lettered %s: %s", "interactions[0]@1", "not JSON")
    assert limiter.flush() == 0            # the window has not ended yet
    clock.t = 10
    assert limiter.flush() == 1
    assert lines()[-1].startswith("WARNING test.logs.flood 4 more like this")
    assert limiter.flush() == 0            # said once


def test_different_templates_levels_and_loggers_are_separate_and_info_and_critical_always_pass(setup):
    logger, clock, lines, _ = setup
    other = logging.getLogger("test.logs.flood.child")   # a child logger: the handler filter still applies
    for _ in range(3):
        logger.warning("a %s", 1)
        logger.error("a %s", 1)
        logger.warning("b %s", 1)
        other.warning("a %s", 1)
        logger.info("progress %s", 1)
        logger.critical("fatal %s", 1)
    assert lines().count("WARNING test.logs.flood a 1") == 1
    assert lines().count("ERROR test.logs.flood a 1") == 1
    assert lines().count("WARNING test.logs.flood b 1") == 1
    assert lines().count("WARNING test.logs.flood.child a 1") == 1
    assert lines().count("INFO test.logs.flood progress 1") == 3
    assert lines().count("CRITICAL test.logs.flood fatal 1") == 3


def test_one_filter_on_two_handlers_decides_once_per_record():
    clock, a, b = Clock(), io.StringIO(), io.StringIO()
    limiter = RateLimitFilter(interval_s=10, clock=clock)
    logger = logging.getLogger("test.logs.two")
    logger.handlers, logger.propagate = [], False
    for buf in (a, b):
        h = logging.StreamHandler(buf)
        h.addFilter(limiter)
        logger.addHandler(h)
    logger.warning("x")
    logger.warning("x")
    assert a.getvalue() == b.getvalue() == "x\n"
    logger.handlers = []


def test_interval_zero_disables_it(setup):
    logger, _, lines, limiter = setup
    limiter.interval_s = 0
    for _ in range(3):
        logger.error("same")
    assert lines() == ["ERROR test.logs.flood same"] * 3


def test_json_lines():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        rec = logging.LogRecord("streamrec.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert out["level"] == "ERROR" and out["logger"] == "streamrec.x" and out["message"] == "failed here"
    assert "ValueError: boom" in out["exc"]


def test_install_filters_every_root_handler_and_refuses_unknown_formats():
    from streamrec.stream.logs import install
    root = logging.Logger("fake-root")
    a, b = logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())
    root.handlers = [a, b]
    limiter = install(root, interval_s=5, fmt="json")
    assert all(limiter in h.filters and isinstance(h.formatter, JsonFormatter) for h in (a, b))
    with pytest.raises(ValueError):
        install(root, interval_s=5, fmt="yaml")
