"""Which scorer a worker runs, from its settings: co-occurrence, the item LM, an LLM re-ranker, micro-batched."""

from __future__ import annotations

import logging

from streamrec.config import Settings
from streamrec.scoring import CooccurrenceScorer, NullScorer
from streamrec.serve.versions import has_model, is_versioned, note_serving, select

log = logging.getLogger(__name__)


def serving_dir(model_dir: str) -> str:
    """The model to serve from ``model_dir``: the directory itself when it is one trained model, else the version
    ``versions.select`` picks (CURRENT, else the newest); "" when there is none yet."""
    if not model_dir or not is_versioned(model_dir):
        return model_dir if model_dir and has_model(model_dir) else ""
    chosen = select(model_dir)   # a bad CURRENT at start: RefusedModel, the worker does not start
    return str(chosen) if chosen is not None else ""


def build_scorer(settings: Settings):
    """The scorer the worker uses.

    * no trained model: co-occurrence alone (it learns online from the stream);
    * a trained model (``model_dir``): the item LM behind the micro-batcher, co-occurrence as its fallback;
    * plus ``reranker_dir``: a local causal LM re-ranks the first stage's candidates, in the same micro-batches;
    * ``model_dir`` may hold model versions (subdirectories): the one ``versions.select`` picks is served, and
      the worker's ``versions.ModelWatcher`` swaps later ones in.
    """
    choice = settings.scorer
    model_dir = serving_dir(settings.model_dir)
    if choice == "auto":
        choice = "lm" if model_dir else "cooc"
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
        first = build_lm_scorer(settings, model_dir or None)
        fallback = first.fallback
        note_serving(first.version)
    else:
        first = fallback = CooccurrenceScorer()
    model = first
    if settings.reranker_dir:   # over cooc: the first stage is the fallback itself (observed once, via the model)
        from streamrec.serve.rerank import LLMReranker
        model = LLMReranker(settings.reranker_dir, {}, first, n_candidates=settings.rerank_candidates)
    return MicroBatcher(model, fallback=fallback, max_batch_size=settings.max_batch_size,
                        max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                        timeout_s=settings.scorer_timeout_s)
