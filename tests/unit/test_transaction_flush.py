"""exactly_once: Faust's buffered changelog writes are sent before the transaction with their offsets commits."""

from __future__ import annotations

import asyncio

from streamrec.stream.adapters import flush_before_transaction_commit


class FakeBuffer:
    def __init__(self, producer, pending: int) -> None:
        self.producer, self.size = producer, pending

    async def flush(self) -> None:   # like Faust's: gives up after a while, one message at a time here
        if self.size:
            self.size -= 1
            self.producer.log.append("sent")


class FakeProducer:
    def __init__(self, pending: int) -> None:
        self.log: list[str] = []
        self.buffer = FakeBuffer(self, pending)

    async def flush(self) -> None:
        self.log.append("in-flight flushed")

    async def commit_transactions(self, offsets, group_id, start_new_transaction=True) -> None:
        self.log.append(f"commit {offsets} buffered={self.buffer.size}")


def test_the_buffer_is_drained_before_the_transaction_commits():
    producer = FakeProducer(pending=3)
    flush_before_transaction_commit(producer)
    asyncio.run(producer.commit_transactions({"tid-0": {"tp": 57}}, "app", start_new_transaction=False))
    assert producer.log == ["sent", "sent", "sent", "in-flight flushed", "commit {'tid-0': {'tp': 57}} buffered=0"]


def test_an_empty_buffer_commits_at_once():
    producer = FakeProducer(pending=0)
    flush_before_transaction_commit(producer)
    asyncio.run(producer.commit_transactions({}, "app"))
    assert producer.log == ["in-flight flushed", "commit {} buffered=0"]
