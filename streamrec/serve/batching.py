"""Micro-batching: many concurrent scoring requests -> one model call.

Callers (the agent, the HTTP lookup) ``await batcher.submit(request)``. A background task flushes a batch when it
holds ``max_batch_size`` requests or its oldest request has waited ``max_wait_ms``, runs ONE scorer call in a worker
thread (torch and ONNX Runtime release the GIL, so the event loop keeps consuming meanwhile) and resolves every
caller. Pending requests of the same user are coalesced: the newest history is scored once and all its callers get
that answer. The queue is bounded: when full, ``submit`` waits (backpressure to the stream) instead of dropping.
A failing or slow model call is answered by the fallback scorer, marked ``fallback`` in the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from streamrec import metrics
from streamrec.scoring import ScoreRequest, Scored, Scorer

log = logging.getLogger(__name__)


class ModelBusy(RuntimeError):
    """The model thread is still running a call that timed out."""


class BatcherClosed(RuntimeError):
    """The worker is stopping: the request was not scored (its batch will not be committed either)."""


class DaemonThreadExecutor(concurrent.futures.Executor):
    """One daemon thread running submitted calls in order.

    Not a ``ThreadPoolExecutor``: Python joins that pool's threads at interpreter exit, even after
    ``shutdown(wait=False)``, so a model call that never returns would hang the worker's exit until SIGKILL. A
    daemon thread is abandoned at exit instead; ``MicroBatcher.close`` has already given it a bounded wait.
    """

    def __init__(self, name: str = "scorer") -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._shutdown = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new calls after shutdown")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:   # handed to the awaiting caller, like ThreadPoolExecutor does
                fut.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        self._queue.put(None)
        if wait:
            self._thread.join()

    @property
    def thread(self) -> threading.Thread:
        return self._thread


@dataclass
class _Pending:
    request: ScoreRequest
    enqueued: float
    waiters: list[asyncio.Future] = field(default_factory=list)

    def coalesce(self, request: ScoreRequest, waiter: asyncio.Future) -> None:
        # The newer state, not the later caller: a lookup that read the state before the agent's last write may
        # reach the queue after the agent's request.
        if request.state_version >= self.request.state_version:
            self.request = request
        self.waiters.append(waiter)


class MicroBatcher:
    def __init__(self, scorer: Scorer, *, fallback: Scorer | None = None, max_batch_size: int = 64,
                 max_wait_ms: float = 5.0, max_queue: int = 4096, timeout_s: float = 2.0):
        if max_batch_size < 1 or max_queue < max_batch_size:
            raise ValueError("need 1 <= max_batch_size <= max_queue")
        self.scorer = scorer
        self.fallback = fallback
        self.name, self.version = scorer.name, scorer.version
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.model_calls = 0
        self._pending: dict[str, _Pending] = {}          # insertion-ordered: oldest user first
        self._arrived = asyncio.Event()
        self._space = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._pool = DaemonThreadExecutor("scorer")
        self._stuck: asyncio.Future | None = None   # a timed-out model call still running in the thread
        self._call: asyncio.Future | None = None    # the model call in flight, if any
        self._closed = False

    def swap(self, scorer: Scorer) -> Scorer:
        """Serve the next batches with ``scorer`` (a model hot-swap); returns the old one.

        Runs on the event loop, like ``_flush``, which reads ``self.scorer`` once per batch when it hands the call to
        the model thread: a call in flight finishes on the old scorer (its answers carry the old version), every
        later batch goes to the new one, and no request is dropped or answered twice. The fallback (and its online
        counts) stays."""
        old, self.scorer = self.scorer, scorer
        self.name, self.version = scorer.name, scorer.version
        return old

    # --- the Scorer protocol, async flavour ---------------------------------------------------------
    def observe(self, history: Sequence[str], item_id: str) -> None:
        self.scorer.observe(history, item_id)

    def on_item(self, item_id: str, record: dict | None) -> None:
        if hasattr(self.scorer, "on_item"):
            self.scorer.on_item(item_id, record)

    async def score_async(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        return list(await asyncio.gather(*(self.submit(r) for r in requests)))

    async def submit(self, request: ScoreRequest) -> Scored:
        if self._closed:
            raise BatcherClosed("the scorer is closed: the worker is stopping")
        self._ensure_running()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        entry = self._pending.get(request.user_id)
        if entry is not None:       # coalesce: score the newest state once, answer everyone
            entry.coalesce(request, fut)
        else:
            async with self._space:
                await self._space.wait_for(lambda: len(self._pending) < self.max_queue)
            entry = self._pending.get(request.user_id)   # may have appeared while we waited
            if entry is not None:
                entry.coalesce(request, fut)
            else:
                self._pending[request.user_id] = _Pending(request, time.perf_counter(), [fut])
        metrics.QUEUE_DEPTH.set(len(self._pending))
        self._arrived.set()
        return await fut

    # --- the flush loop -----------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="streamrec-batcher")

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            if not self._pending:
                self._arrived.clear()
                continue
            oldest = next(iter(self._pending.values())).enqueued
            deadline = oldest + self.max_wait
            while len(self._pending) < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.pop(u) for u in list(self._pending)[: self.max_batch_size]]
            if not self._pending:
                self._arrived.clear()
            async with self._space:
                self._space.notify_all()
            metrics.QUEUE_DEPTH.set(len(self._pending))
            try:
                await self._flush(batch)
            except asyncio.CancelledError:   # close() while this batch was being scored: answer its callers
                for p in batch:
                    for w in p.waiters:
                        if not w.done():
                            w.set_exception(BatcherClosed("the worker is stopping"))
                raise

    async def _flush(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        for p in batch:
            metrics.QUEUE_WAIT.observe(now - p.enqueued)
        requests = [p.request for p in batch]
        metrics.SCORE_BATCH.observe(len(requests))
        try:
            if self._stuck is not None and not self._stuck.done():
                # The model thread is still busy with a call that timed out: queueing behind it would time out
                # too, batch after batch. Answer from the fallback until it is free again.
                raise ModelBusy("an earlier model call timed out and is still running")
            self.model_calls += 1
            started = time.perf_counter()
            scorer = self.scorer   # this batch's: a swap() meanwhile applies to the next batch
            call = self._call = asyncio.get_running_loop().run_in_executor(self._pool, scorer.score, requests)
            try:
                results = await asyncio.wait_for(asyncio.shield(call), self.timeout_s)
            except asyncio.TimeoutError:
                self._stuck = call   # the thread cannot be interrupted; remember it until it returns
                raise
            metrics.COMPUTE.labels(scorer.name).observe(time.perf_counter() - started)
            if len(results) != len(requests):   # zip() below would leave the surplus callers waiting forever
                raise RuntimeError(f"scorer returned {len(results)} results for {len(requests)} requests")
        except Exception as exc:      # includes the timeout: never leave a caller waiting or without an answer
            reason = ("timeout" if isinstance(exc, asyncio.TimeoutError) else
                      "busy" if isinstance(exc, ModelBusy) else "error")
            metrics.FALLBACKS.labels(reason).inc(len(requests))
            try:
                if self.fallback is None:
                    raise exc
                results = self.fallback.score(requests)
                if len(results) != len(requests):
                    raise RuntimeError(f"fallback returned {len(results)} results for {len(requests)} requests")
            except Exception as final:   # a failing fallback must not kill the flush loop and strand the callers
                for p in batch:
                    for w in p.waiters:
                        if not w.done():
                            w.set_exception(final)
                return
            detail = f"{reason}: {type(exc).__name__} {exc}".strip()[:200]
            for r in results:
                r.fallback, r.fallback_reason = True, detail
        for p, r in zip(batch, results):
            for w in p.waiters:
                if not w.done():
                    w.set_result(r)

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop: no new requests, waiting callers get ``BatcherClosed``, and a model call in flight gets at most
        ``timeout_s`` (default: the scorer timeout) to finish; one that outlives it is abandoned with its daemon
        thread, so neither this call nor the interpreter's exit can hang on it."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for p in self._pending.values():
            for w in p.waiters:
                if not w.done():
                    w.set_exception(BatcherClosed("the worker is stopping"))
        self._pending.clear()
        call = self._call
        if call is not None and not call.done():
            done, _ = await asyncio.wait({call}, timeout=self.timeout_s if timeout_s is None else timeout_s)
            if not done:
                log.warning("a model call is still running after %.1f s; abandoning it to stop",
                            self.timeout_s if timeout_s is None else timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
