"""MicroBatcher: one model call per micro-batch, flush triggers, coalescing, backpressure, fallbacks.

pytest-asyncio is not installed: every test drives its own loop with asyncio.run, and builds the batcher inside
it (its asyncio primitives belong to that loop).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streamrec.serve.batching import BatcherClosed, MicroBatcher
from streamrec.scoring import CooccurrenceScorer, Scored, ScoreRequest

pytestmark = pytest.mark.timeout(30)


class FakeScorer:
    """Answers each request with one item naming its user and history, and logs every call."""

    def __init__(self, name="fake", *, fail: Exception | None = None, gate: threading.Event | None = None,
                 delay: float = 0.0, drop_last: bool = False):
        self.name, self.version = name, name + "-1"
        self.fail, self.gate, self.delay, self.drop_last = fail, gate, delay, drop_last
        self.calls: list[list[ScoreRequest]] = []
        self.started = threading.Event()

    def score(self, requests):
        self.calls.append(list(requests))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        out = [Scored([(f"{r.user_id}:{'/'.join(r.history)}", 1.0)], self.name, self.version) for r in requests]
        return out[:-1] if self.drop_last else out

    def observe(self, history, item_id):
        pass


def req(user, *history, k=10):
    return ScoreRequest(user, tuple(history), k)


def run(coro_fn, *args, **kwargs):
    """asyncio.run with a 10 s cap, so a hung batcher fails the test instead of stalling the run."""
    async def main():
        return await asyncio.wait_for(coro_fn(*args, **kwargs), 10)
    return asyncio.run(main())


def answer(scored: Scored) -> str:
    return scored.items[0][0]


# --- (a) one model call for many users --------------------------------------------------------------------
def test_concurrent_users_share_one_model_call():
    scorer = FakeScorer()

    async def go():
        b = MicroBatcher(scorer, max_batch_size=64, max_wait_ms=30)
        try:
            out = await asyncio.gather(*(b.submit(req(f"u{i}", f"h{i}")) for i in range(6)))
            return b.model_calls, out
        finally:
            await b.close()

    calls, out = run(go)
    assert calls == 1 and len(scorer.calls) == 1
    assert sorted(r.user_id for r in scorer.calls[0]) == [f"u{i}" for i in range(6)]
    assert [answer(s) for s in out] == [f"u{i}:h{i}" for i in range(6)]      # each caller gets its own answer
    assert all(not s.fallback for s in out)


def test_score_async_keeps_request_order():
    scorer = FakeScorer()

    async def go():
        b = MicroBatcher(scorer, max_wait_ms=5)
        try:
            return await b.score_async([req("b", "1"), req("a", "2"), req("c", "3")])
        finally:
            await b.close()

    assert [answer(s) for s in run(go)] == ["b:1", "a:2", "c:3"]
    assert len(scorer.calls) == 1


def test_observe_and_on_item_are_forwarded():
    class Obs(FakeScorer):
        def __init__(self):
            super().__init__()
            self.seen = []

        def observe(self, history, item_id):
            self.seen.append((tuple(history), item_id))

        def on_item(self, item_id, record):
            self.seen.append(("item", item_id))

    async def go():
        s = Obs()
        b = MicroBatcher(s)
        b.observe(["a"], "b")
        b.on_item("x", None)
        MicroBatcher(FakeScorer()).on_item("x", None)      # scorers without on_item are fine
        await b.close()
        return s.seen

    assert run(go) == [(("a",), "b"), ("item", "x")]


# --- (b) flush triggers -----------------------------------------------------------------------------------
def test_flush_at_max_batch_size_without_waiting():
    scorer = FakeScorer()

    async def go():
        b = MicroBatcher(scorer, max_batch_size=4, max_wait_ms=60_000)   # the timer would never fire in time
        try:
            t0 = time.perf_counter()
            out = await asyncio.gather(*(b.submit(req(f"u{i}")) for i in range(8)))
            return time.perf_counter() - t0, b.model_calls, out
        finally:
            await b.close()

    elapsed, calls, out = run(go)
    assert elapsed < 5 and calls == 2
    assert [len(c) for c in scorer.calls] == [4, 4]
    assert len(out) == 8


def test_flush_at_max_wait():
    scorer = FakeScorer()

    async def go():
        b = MicroBatcher(scorer, max_batch_size=64, max_wait_ms=80)
        try:
            t0 = time.perf_counter()
            first = asyncio.ensure_future(b.submit(req("u1")))
            await asyncio.sleep(0.02)
            second = asyncio.ensure_future(b.submit(req("u2")))         # joins the same batch
            await asyncio.gather(first, second)
            return time.perf_counter() - t0
        finally:
            await b.close()

    elapsed = run(go)
    assert 0.075 <= elapsed < 5                  # not before the oldest request waited max_wait_ms
    assert [sorted(r.user_id for r in c) for c in scorer.calls] == [["u1", "u2"]]


def test_batches_continue_after_a_flush():
    scorer = FakeScorer()

    async def go():
        b = MicroBatcher(scorer, max_batch_size=8, max_wait_ms=5)
        try:
            r1 = await b.submit(req("u1", "a"))
            r2 = await b.submit(req("u1", "a", "b"))
            return r1, r2, b.model_calls
        finally:
            await b.close()

    r1, r2, calls = run(go)
    assert (answer(r1), answer(r2), calls) == ("u1:a", "u1:a/b", 2)


# --- (c) coalescing ---------------------------------------------------------------------------------------
def test_pending_requests_of_one_user_are_coalesced_to_the_newest():
    scorer = FakeScorer()

    async def go():
        b = MicroBatcher(scorer, max_wait_ms=50)
        try:
            old = asyncio.ensure_future(b.submit(req("u", "a")))
            await asyncio.sleep(0)
            other = asyncio.ensure_future(b.submit(req("v", "z")))
            await asyncio.sleep(0)
            new = asyncio.ensure_future(b.submit(req("u", "a", "b")))
            return await asyncio.gather(old, new, other), b.model_calls
        finally:
            await b.close()

    (old, new, other), calls = run(go)
    assert calls == 1 and len(scorer.calls) == 1
    assert [(r.user_id, r.history) for r in scorer.calls[0]] == [("u", ("a", "b")), ("v", ("z",))]
    assert old is new and answer(old) == "u:a/b"          # both callers get the answer for the newest history
    assert answer(other) == "v:z"


# --- (d) bounded queue: backpressure, nothing dropped -----------------------------------------------------
def test_full_queue_makes_submit_wait_and_everything_is_answered():
    gate = threading.Event()
    scorer = FakeScorer(gate=gate)

    async def go():
        b = MicroBatcher(scorer, max_batch_size=2, max_queue=2, max_wait_ms=1, timeout_s=10)
        tasks = [asyncio.ensure_future(b.submit(req(f"u{i}"))) for i in range(7)]
        try:
            for _ in range(200):                           # until the first batch is inside the (blocked) model
                if scorer.started.is_set():
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            pending_while_blocked = len(b._pending)
            done_while_blocked = sum(t.done() for t in tasks)
            gate.set()
            out = await asyncio.gather(*tasks)
            return pending_while_blocked, done_while_blocked, out
        finally:
            gate.set()
            await b.close()

    pending, done, out = run(go)
    assert scorer.started.is_set()
    assert pending == 2                # the queue is full at its bound ...
    assert done == 0                   # ... and the other submitters wait instead of being dropped or failed
    assert [answer(s) for s in out] == [f"u{i}:" for i in range(7)]
    assert sorted(r.user_id for c in scorer.calls for r in c) == sorted(f"u{i}" for i in range(7))
    assert all(len(c) <= 2 for c in scorer.calls)


def test_queue_depth_never_exceeds_max_queue_with_slow_scorer():
    scorer = FakeScorer(delay=0.01)

    async def go():
        b = MicroBatcher(scorer, max_batch_size=3, max_queue=4, max_wait_ms=2, timeout_s=10)
        peak = 0
        stop = False

        async def watch():
            nonlocal peak
            while not stop:
                peak = max(peak, len(b._pending))
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        try:
            out = await asyncio.gather(*(b.submit(req(f"u{i}")) for i in range(20)))
        finally:
            stop = True
            await watcher
            await b.close()
        return peak, out

    peak, out = run(go)
    assert peak == 4
    assert len(out) == 20 and sum(len(c) for c in scorer.calls) == 20


# --- (e)(f)(g) failures and fallbacks ---------------------------------------------------------------------
def test_failing_scorer_is_answered_by_fallback():
    scorer = FakeScorer(fail=RuntimeError("cuda went away"))
    fallback = FakeScorer("backup")

    async def go():
        b = MicroBatcher(scorer, fallback=fallback, max_wait_ms=5)
        try:
            return await asyncio.gather(b.submit(req("u1", "a")), b.submit(req("u2", "b")))
        finally:
            await b.close()

    out = run(go)
    assert len(scorer.calls) == 1 and len(fallback.calls) == 1
    assert [answer(s) for s in out] == ["u1:a", "u2:b"]
    for s in out:
        assert s.fallback is True and s.scorer == "backup"
        assert s.fallback_reason.startswith("error") and "cuda went away" in s.fallback_reason


def test_slow_scorer_times_out_to_fallback():
    gate = threading.Event()
    scorer = FakeScorer(gate=gate)
    fallback = FakeScorer("backup")

    async def go():
        b = MicroBatcher(scorer, fallback=fallback, max_wait_ms=1, timeout_s=0.1)
        try:
            t0 = time.perf_counter()
            s = await b.submit(req("u1", "a"))
            return s, time.perf_counter() - t0
        finally:
            gate.set()
            await b.close()

    s, elapsed = run(go)
    assert s.fallback is True and s.fallback_reason.startswith("timeout")
    assert answer(s) == "u1:a" and s.scorer == "backup"
    assert 0.09 <= elapsed < 5


def test_coalescing_keeps_the_newer_state_not_the_later_caller():
    gate = threading.Event()
    scorer = FakeScorer(gate=gate)

    async def go():
        b = MicroBatcher(scorer, max_batch_size=1, max_wait_ms=1, timeout_s=5)
        try:
            busy = asyncio.ensure_future(b.submit(req("blocker")))   # holds the model while the others queue
            while not scorer.started.is_set():
                await asyncio.sleep(0.005)
            newer = asyncio.ensure_future(b.submit(ScoreRequest("u1", ("a", "b"), 10, state_version=2)))
            await asyncio.sleep(0.01)
            stale = asyncio.ensure_future(b.submit(ScoreRequest("u1", ("a",), 10, state_version=1)))
            await asyncio.sleep(0.01)
            gate.set()
            return await asyncio.gather(busy, newer, stale)
        finally:
            gate.set()
            await b.close()

    _, newer, stale = run(go)
    assert answer(newer) == answer(stale) == "u1:a/b"                      # the stale lookup came last, lost
    assert [r.history for r in scorer.calls[1]] == [("a", "b")]


def test_after_a_timeout_the_busy_model_is_bypassed_until_it_returns():
    gate = threading.Event()
    scorer = FakeScorer(gate=gate)
    fallback = FakeScorer("backup")

    async def go():
        b = MicroBatcher(scorer, fallback=fallback, max_wait_ms=1, timeout_s=0.1)
        try:
            first = await b.submit(req("u1", "a"))             # times out; the model thread stays blocked
            t0 = time.perf_counter()
            second = await b.submit(req("u2", "b"))            # must not queue behind the stuck call
            waited = time.perf_counter() - t0
            gate.set()                                         # the stuck call returns ...
            while b._stuck is not None and not b._stuck.done():
                await asyncio.sleep(0.01)
            third = await b.submit(req("u3", "c"))             # ... and the model is used again
            return first, second, waited, third
        finally:
            gate.set()
            await b.close()

    first, second, waited, third = run(go)
    assert first.fallback_reason.startswith("timeout")
    assert second.fallback and second.fallback_reason.startswith("busy") and waited < 0.09
    assert not third.fallback and third.scorer == "fake" and answer(third) == "u3:c"
    assert len(scorer.calls) == 2                              # u1 (stuck) and u3; u2 never reached the model


def test_no_fallback_the_exception_reaches_every_caller():
    scorer = FakeScorer(fail=KeyError("missing item"))

    async def go():
        b = MicroBatcher(scorer, max_wait_ms=5)
        try:
            return await asyncio.gather(b.submit(req("u1")), b.submit(req("u2")), return_exceptions=True)
        finally:
            await b.close()

    out = run(go)
    assert [type(e) for e in out] == [KeyError, KeyError]
    assert "missing item" in str(out[0])


def test_batcher_keeps_working_after_a_failed_batch():
    scorer = FakeScorer(fail=ValueError("once"))

    async def go():
        b = MicroBatcher(scorer, max_wait_ms=1)
        try:
            with pytest.raises(ValueError):
                await b.submit(req("u1"))
            scorer.fail = None
            return await b.submit(req("u1", "x"))
        finally:
            await b.close()

    assert answer(run(go)) == "u1:x"


def test_failing_fallback_fails_the_callers_instead_of_hanging():
    scorer = FakeScorer(fail=RuntimeError("primary"))
    fallback = FakeScorer("backup", fail=RuntimeError("fallback too"))

    async def go():
        b = MicroBatcher(scorer, fallback=fallback, max_wait_ms=1)
        try:
            with pytest.raises(RuntimeError, match="fallback too"):
                await asyncio.wait_for(b.submit(req("u1")), 3)
            fallback.fail = None
            return await asyncio.wait_for(b.submit(req("u2")), 3)       # and the loop is still alive
        finally:
            await b.close()

    s = run(go)
    assert s.fallback and answer(s) == "u2:"


def test_scorer_returning_too_few_results_falls_back_instead_of_stranding_callers():
    scorer = FakeScorer(drop_last=True)
    fallback = CooccurrenceScorer()

    async def go():
        b = MicroBatcher(scorer, fallback=fallback, max_wait_ms=5)
        try:
            return await asyncio.wait_for(asyncio.gather(b.submit(req("u1")), b.submit(req("u2"))), 3)
        finally:
            await b.close()

    out = run(go)
    assert len(out) == 2 and all(s.fallback and s.scorer == "cooc" for s in out)
    assert "2 requests" in out[0].fallback_reason


@pytest.mark.parametrize("size, queue", [(0, 10), (10, 5)])
def test_bad_limits(size, queue):
    with pytest.raises(ValueError):
        MicroBatcher(FakeScorer(), max_batch_size=size, max_queue=queue)


# --- shutdown ----------------------------------------------------------------------------------------------
def test_close_is_bounded_and_answers_every_waiting_caller():
    gate = threading.Event()        # never set by the test: a model call that never returns
    scorer = FakeScorer(gate=gate)

    async def go():
        b = MicroBatcher(scorer, max_batch_size=1, max_wait_ms=1, timeout_s=5.0)
        first = asyncio.ensure_future(b.submit(req("u1", "a")))    # in the model thread, stuck
        await asyncio.get_running_loop().run_in_executor(None, scorer.started.wait, 5)
        second = asyncio.ensure_future(b.submit(req("u2", "b")))   # queued behind it
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        await b.close(timeout_s=0.2)
        took = time.perf_counter() - started
        results = await asyncio.gather(first, second, return_exceptions=True)
        with pytest.raises(BatcherClosed):
            await b.submit(req("u3", "c"))
        return took, results, b._pool.thread

    took, results, thread = run(go)
    gate.set()
    assert took < 2.0, took
    assert all(isinstance(r, BatcherClosed) for r in results), results
    assert thread.daemon


def test_a_hung_model_call_does_not_keep_the_interpreter_from_exiting(tmp_path):
    """The process-level promise: with a model call that never returns, close() then exit takes bounded time.
    (A ThreadPoolExecutor's thread is joined at interpreter exit and would hang here until the timeout.)"""
    import subprocess
    import sys
    script = tmp_path / "hang.py"
    script.write_text(
        "import asyncio, threading\n"
        "from streamrec.serve.batching import MicroBatcher\n"
        "from streamrec.scoring import ScoreRequest, Scored\n"
        "class Hang:\n"
        "    name, version = 'hang', '1'\n"
        "    def score(self, requests):\n"
        "        threading.Event().wait()\n"
        "async def main():\n"
        "    b = MicroBatcher(Hang(), max_batch_size=1, max_wait_ms=1, timeout_s=0.1)\n"
        "    t = asyncio.ensure_future(b.submit(ScoreRequest('u', ('a',), 5)))\n"
        "    await asyncio.sleep(0.3)\n"
        "    await b.close(timeout_s=0.1)\n"
        "    await asyncio.gather(t, return_exceptions=True)\n"
        "asyncio.run(main())\n"
        "print('exited')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "exited" in out.stdout, out.stderr


def test_swap_between_batches_keeps_the_call_in_flight_and_loses_nothing():
    """A swap while a model call runs: that batch is answered by the old scorer, every later one by the new one;
    every request is answered exactly once; the fallback stays."""
    gate = threading.Event()
    old, new = FakeScorer("old", gate=gate), FakeScorer("new")
    fallback = CooccurrenceScorer()

    async def main():
        b = MicroBatcher(old, fallback=fallback, max_batch_size=4, max_wait_ms=1)
        first = [asyncio.ensure_future(b.submit(req(f"a{i}", "x"))) for i in range(4)]
        await asyncio.get_running_loop().run_in_executor(None, old.started.wait, 5)   # the old call is running
        waiting = [asyncio.ensure_future(b.submit(req(f"b{i}", "y"))) for i in range(6)]
        await asyncio.sleep(0.01)
        assert b.swap(new) is old and (b.name, b.version) == ("new", "new-1") and b.fallback is fallback
        gate.set()
        before, after = await asyncio.gather(*first), await asyncio.gather(*waiting)
        later = await b.submit(req("c", "z"))
        await b.close()
        return before, after, later

    before, after, later = run(main)
    assert [s.version for s in before] == ["old-1"] * 4
    assert [s.version for s in after] == ["new-1"] * 6 and later.version == "new-1"
    assert [answer(s) for s in after] == [f"b{i}:y" for i in range(6)]
    assert sum(len(c) for c in old.calls) == 4 and sum(len(c) for c in new.calls) == 7
