"""exactly_once: Faust's buffered changelog writes are sent before the transaction with their offsets commits."""

from __future__ import annotations

import asyncio

from streamrec.stream.adapters import flush_before_transaction_commit


class FakeBuffer:
    """Faust 0.15.3's ProducerBuffer in miniature: a queue, a background task that takes one message at a time and
    sends it (``_handle_pending``, which binds ``_send_pending`` when it starts), and a ``flush`` that only waits for
    the queue, giving up after 0.1 s without progress."""

    def __init__(self, producer, send_s: float) -> None:
        self.producer, self.send_s = producer, send_s
        self.pending: asyncio.Queue = asyncio.Queue()
        self.message_sent = asyncio.Event()

    @property
    def size(self) -> int:
        return self.pending.qsize()

    async def _send_pending(self, msg) -> None:
        await asyncio.sleep(self.send_s)              # the message is out of the queue but not yet sent
        self.producer.log.append(f"sent {msg}")

    async def _handle_pending(self) -> None:
        send_pending = self._send_pending
        while True:
            msg = await self.pending.get()
            await send_pending(msg)
            self.message_sent.set()

    async def flush(self) -> None:
        while self.size:
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
            except asyncio.TimeoutError:
                return


class FakeProducer:
    def __init__(self, send_s: float = 0.0) -> None:
        self.log: list[str] = []
        self.buffer = FakeBuffer(self, send_s)

    async def flush(self) -> None:
        self.log.append("in-flight flushed")

    async def commit_transactions(self, offsets, group_id, start_new_transaction=True) -> None:
        self.log.append(f"commit {offsets}")


async def commit_after(producer: FakeProducer, messages: list[str], offsets: dict) -> None:
    task = asyncio.create_task(producer.buffer._handle_pending())   # started after the wrapper, as in the worker
    for m in messages:
        producer.buffer.pending.put_nowait(m)
    await asyncio.sleep(0)                                          # the task takes the first message
    await producer.commit_transactions(offsets, "app", start_new_transaction=False)
    task.cancel()


def test_the_buffer_is_drained_before_the_transaction_commits():
    producer = FakeProducer()
    flush_before_transaction_commit(producer)
    asyncio.run(commit_after(producer, ["a", "b", "c"], {"tid-0": {"tp": 57}}))
    assert producer.log == ["sent a", "sent b", "sent c", "in-flight flushed", "commit {'tid-0': {'tp': 57}}"]


def test_a_message_taken_from_the_queue_but_not_sent_is_waited_for():
    # The case Faust's own flush misses: the queue is empty, the background task still holds the last write (its
    # send takes longer than flush's 0.1 s patience). Without the wait it would join the next transaction.
    producer = FakeProducer(send_s=0.3)
    flush_before_transaction_commit(producer)
    asyncio.run(commit_after(producer, ["last"], {"tid-0": {"tp": 58}}))
    assert producer.log == ["sent last", "in-flight flushed", "commit {'tid-0': {'tp': 58}}"]


def test_an_empty_buffer_commits_at_once():
    producer = FakeProducer()
    flush_before_transaction_commit(producer)
    asyncio.run(commit_after(producer, [], {}))
    assert producer.log == ["in-flight flushed", "commit {}"]
