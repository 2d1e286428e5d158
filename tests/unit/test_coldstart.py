"""The cold-start queue on its own: what is taken, what stays after a failure, what ``done`` removes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from streamrec.serve import coldstart
from streamrec.serve.coldstart import ColdStartQueue


def embed(texts):
    return np.ones((len(texts), 4), dtype=np.float32)


def test_items_without_a_title_are_not_queued():
    q = ColdStartQueue(4, embed)
    for title in (None, "", "   ", 42):
        q.offer("x", title)
    assert len(q) == 0 and q.embed_next(set()) is None


def test_a_batch_is_taken_in_arrival_order_and_removed_only_when_done(monkeypatch):
    monkeypatch.setattr(coldstart, "FLUSH_LIMIT", 2)
    q = ColdStartQueue(4, embed)
    for i in range(3):
        q.offer(f"new-{i}", f"Title {i}")
    pending, emb = q.embed_next(set())
    assert [i for i, _ in pending] == ["new-0", "new-1"] and emb.shape == (2, 4)
    assert len(q) == 3                                   # not in the table yet: still queued
    q.done(pending)
    assert len(q) == 1 and [i for i, _ in q.embed_next(set())[0]] == ["new-2"]


def test_items_known_meanwhile_are_dropped_and_a_new_title_outlives_done():
    q = ColdStartQueue(4, embed)
    q.offer("a", "Old title")
    q.offer("b", "B")
    pending, _ = q.embed_next({"b"})                     # b became known (e.g. a hot-swapped model has it)
    assert pending == [("a", "Old title")]
    q.offer("a", "New title")                            # renamed while being embedded
    q.done(pending)
    assert q.embed_next(set())[0] == [("a", "New title")]


def test_embedding_failures_keep_the_items_and_back_off(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(coldstart, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    calls = []

    def broken(texts):
        calls.append(list(texts))
        raise OSError("encoder down")

    q = ColdStartQueue(4, broken)
    q.offer("a", "A")
    assert q.embed_next(set()) is None and len(q) == 1 and len(calls) == 1
    assert q.embed_next(set()) is None and len(calls) == 1          # within the 1 s backoff: not retried
    clock[0] += 1.0
    assert q.embed_next(set()) is None and len(calls) == 2          # retried, failed again: 2 s now
    clock[0] += 1.5
    assert q.embed_next(set()) is None and len(calls) == 2
    q._embed = embed
    clock[0] += 0.5
    assert q.embed_next(set())[0] == [("a", "A")]


@pytest.mark.parametrize("shape", [(1, 3), (2, 4)])
def test_embeddings_of_the_wrong_shape_count_as_a_failure(shape):
    q = ColdStartQueue(4, lambda texts: np.zeros(shape, np.float32))
    q.offer("a", "A")
    assert q.embed_next(set()) is None and len(q) == 1
