"""app.build_scorer: which scorer the worker runs for which settings, and that online learning reaches every
co-occurrence model exactly once."""

from __future__ import annotations

import asyncio

import pytest

from streamrec.serve.build import build_scorer, has_model
from streamrec.serve.batching import MicroBatcher
from streamrec.config import Settings
from streamrec.scoring import CooccurrenceScorer, ScoreRequest

from .test_rerank import TITLES, build_checkpoint


def test_cooc_without_model_and_auto_ignores_an_empty_model_dir(tmp_path):
    assert isinstance(build_scorer(Settings()), CooccurrenceScorer)
    assert not has_model(str(tmp_path))
    assert isinstance(build_scorer(Settings(model_dir=str(tmp_path))), CooccurrenceScorer)
    with pytest.raises(ValueError, match="unknown scorer"):
        build_scorer(Settings(scorer="magic"))


def test_reranker_over_cooc_is_micro_batched_and_learns_once(tmp_path):
    ckpt = build_checkpoint(tmp_path / "llm")
    scorer = build_scorer(Settings(reranker_dir=str(ckpt), rerank_candidates=5, max_wait_ms=1))
    assert isinstance(scorer, MicroBatcher)
    assert scorer.scorer.name == "llm-rerank"
    cooc = scorer.fallback
    assert isinstance(cooc, CooccurrenceScorer) and scorer.scorer.first_stage is cooc
    for item in TITLES:
        scorer.on_item(item, {"item_id": item, "title": TITLES[item]})
    for u in range(20):   # everyone goes 1 -> 2 -> 3
        scorer.observe([], "1")
        scorer.observe(["1"], "2")
        scorer.observe(["1", "2"], "3")
    assert cooc.pop["1"] == 20 and cooc.cooc["1"]["2"] == 20    # not doubled by two paths

    async def ask():
        reqs = [ScoreRequest(f"u{i}", ("1",), 3, frozenset({"1"})) for i in range(4)]
        out = await scorer.score_async(reqs)
        await scorer.close()
        return out

    results = asyncio.run(ask())
    assert scorer.model_calls == 1                                  # four users, one forward pass
    for r in results:
        assert r.scorer == "llm-rerank" and not r.fallback
        assert {i for i, _ in r.items} <= {"2", "3"} and "1" not in {i for i, _ in r.items}


def test_scorer_none_keeps_the_answer_trivial():
    """``scorer=none`` (benchmarks: the framework without the scorer) answers every request, with no items."""
    scorer = build_scorer(Settings(scorer="none"))
    scorer.observe(["a"], "b")
    [answer] = scorer.score([ScoreRequest("u", ("a", "b"), 10)])
    assert (answer.items, answer.scorer) == ([], "none")
