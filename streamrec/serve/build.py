"""Which scorer a worker runs, from its settings: co-occurrence, the item LM, an LLM re-ranker, micro-batched."""

from __future__ import annotations

import logging
from pathlib import Path

from streamrec.config import Settings
from streamrec.scoring import CooccurrenceScorer, NullScorer

log = logging.getLogger(__name__)


def has_model(model_dir: str) -> bool:
    """A `streamrec train` output directory or its model/ subdirectory (HF config.json next to vocab.json)."""
    return any((Path(model_dir) / sub / "config.json").is_file() for sub in ("", "model"))


def build_scorer(settings: Settings):
    """The scorer the worker uses.

    * no trained model: co-occurrence alone (it learns online from the stream);
    * a trained model (``model_dir``): the item LM behind the micro-batcher, co-occurrence as its fallback;
    * plus ``reranker_dir``: a local causal LM re-ranks the first stage's candidates, in the same micro-batches.
    """
    choice = settings.scorer
    if choice == "auto":
        choice = "lm" if settings.model_dir and has_model(settings.model_dir) else "cooc"
        if settings.model_dir and choice == "cooc":   # e.g. a fresh volume before the first model lands
            log.warning("no trained model under %s yet: scoring with co-occurrence", settings.model_dir)
    if choice == "none":   # framework cost alone (benchmarks): state and messages, no scoring
        return NullScorer()
    if choice not in ("lm", "cooc"):
        raise ValueError(f"unknown scorer {settings.scorer!r} (auto, lm, cooc or none)")
    if choice == "cooc" and not settings.reranker_dir:
        return CooccurrenceScorer()
    from streamrec.serve.batching import MicroBatcher   # heavy imports (torch, onnxruntime) only for a model
    if choice == "lm":
        from streamrec.serve.lm import build_lm_scorer
        first = build_lm_scorer(settings)
        fallback = first.fallback
    else:
        first = fallback = CooccurrenceScorer()
    model = first
    if settings.reranker_dir:   # over cooc: the first stage is the fallback itself (observed once, via the model)
        from streamrec.serve.rerank import LLMReranker
        model = LLMReranker(settings.reranker_dir, {}, first, n_candidates=settings.rerank_candidates)
    return MicroBatcher(model, fallback=fallback, max_batch_size=settings.max_batch_size,
                        max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                        timeout_s=settings.scorer_timeout_s)
