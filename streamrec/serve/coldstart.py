"""Cold start: unknown catalogue items with a title, queued until their title is embedded.

``LMScorer.on_item`` offers an item here (from the event loop); before the next scoring call ``LMScorer.flush_items``
takes up to ``FLUSH_LIMIT`` of them with their embeddings (``ColdStartQueue.embed_next``), appends them to the model
and the backend, and only then removes them (``done``). The text is what the trainer embedded: ``text.clean_title``
of the title, through the encoder named in ``train_config.json`` (the ONNX export when ``streamrec export`` left
one, else sentence-transformers).

An embedding failure leaves the items queued for a retry after a doubling backoff, so a broken encoder neither
loses items nor costs every batch. The queue has its own lock: ``offer`` (event loop) never waits for a model
call running in another thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Container

import numpy as np

from streamrec import metrics

log = logging.getLogger(__name__)

FLUSH_LIMIT = 256   # cold-start items embedded per scoring call: a catalog burst must not stall one batch for long
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0   # cold-start embedding retries: doubling backoff between these


def _embed_texts(texts: list[str], model: str | None = None):
    """The trainer's sentence encoder (``text.embed_texts``; heavy: imported on the first cold-start item)."""
    from streamrec.model.text import embed_texts
    return embed_texts(texts, model=model, progress=False, use_cache=False)


def _clean_title(title: str) -> str:
    from streamrec.model.text import clean_title   # what the trainer does to titles before embedding them
    return clean_title(title)


class ColdStartQueue:
    """item id -> title, until embedded and added; ``embed`` (texts -> [n, text_dim]) or the trainer's encoder."""

    def __init__(self, text_dim: int, embed: Callable[[list[str]], Any] | None = None,
                 text_model: str | None = None):
        self.text_dim = text_dim
        self._embed = embed
        self.text_model = text_model
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()
        self._failures = 0
        self._retry_at = 0.0            # time.monotonic() before which a failed embedding is not retried

    def __len__(self) -> int:
        return len(self._pending)

    def offer(self, item_id: str, title: Any) -> None:
        if isinstance(title, str) and title.strip():
            with self._lock:
                self._pending[item_id] = title
                metrics.COLD_START_BACKLOG.set(len(self._pending))

    def embed_next(self, known: Container[str]) -> tuple[list[tuple[str, str]], np.ndarray] | None:
        """Up to ``FLUSH_LIMIT`` queued (item id, title) pairs and their [n, text_dim] embeddings, or None: nothing
        queued, a retry not due yet, or the embedding failed (logged; the items stay queued, the backoff doubles).
        Items that became ``known`` since they were queued are dropped."""
        if time.monotonic() < self._retry_at:
            return None
        with self._lock:
            for item_id in [i for i in self._pending if i in known]:
                del self._pending[item_id]
            pending = list(self._pending.items())[:FLUSH_LIMIT]
            metrics.COLD_START_BACKLOG.set(len(self._pending))
        if not pending:
            return None
        try:
            texts = [_clean_title(t) for _, t in pending]
            emb = self._embed(texts) if self._embed else _embed_texts(texts, self.text_model)
            emb = np.asarray(emb, dtype=np.float32)
            if emb.shape != (len(pending), self.text_dim):
                raise ValueError(f"text embeddings of shape {tuple(emb.shape)}, expected "
                                 f"({len(pending)}, {self.text_dim})")
        except Exception:   # cold start must never take scoring down; the items stay queued
            self._failures += 1
            wait = min(RETRY_FIRST_S * 2 ** (self._failures - 1), RETRY_MAX_S)
            self._retry_at = time.monotonic() + wait
            log.exception("could not embed %d cold-start item(s); kept queued, retry in %.0f s", len(pending), wait)
            return None
        self._failures, self._retry_at = 0, 0.0
        return pending, emb

    def done(self, added: list[tuple[str, str]]) -> None:
        """Remove items now in the table (unless re-offered with another title meanwhile: that one stays)."""
        with self._lock:
            for item_id, title in added:
                if self._pending.get(item_id) == title:
                    del self._pending[item_id]
            metrics.COLD_START_BACKLOG.set(len(self._pending))
