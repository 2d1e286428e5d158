"""The served ranking = LM logits + w x co-occurrence (model/blend.py): chosen on validation, served identically."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from streamrec.model.blend import blend_score_fn, choose_weight, last_batch, neighbour_score_fn, save_blend
from streamrec.model.evaluate import Split, evaluate, evaluate_many, lm_score_fn
from streamrec.model.export import export
from streamrec.model.itemlm import ItemLM, ItemLMConfig, ItemVocab
from streamrec.scoring import CooccurrenceScorer, ScoreRequest
from streamrec.serve.lm import LMScorer

N_ITEMS = 60
pytestmark = pytest.mark.usefixtures("one_thread")


def item(i: int) -> str:
    return f"sku-{i}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("itemlm-blend")
    torch.manual_seed(1)
    model = ItemLM(ItemLMConfig(n_items=N_ITEMS, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=32, max_position_embeddings=16))
    model.save_pretrained(d)
    ItemVocab(item(i) for i in range(1, N_ITEMS + 1)).save(d)
    export(d, ("fp32",), threads=1)
    return d


@pytest.fixture(scope="module")
def cooc():
    rng = np.random.default_rng(0)
    seqs = [[item(int(i)) for i in rng.integers(1, 15, size=8)] for _ in range(200)]   # a dense corner of items
    return CooccurrenceScorer().fit(seqs)


def test_neighbour_scores_are_score_one_without_the_popularity_term(cooc):
    hist = (item(1), item(2), item(3))
    top = dict(cooc.score_one(ScoreRequest("u", hist, 5)))
    neigh = cooc.neighbour_scores(hist)
    norm = math.log1p(cooc._max_pop)
    for c, s in top.items():
        assert s == pytest.approx(neigh[c] + cooc.popularity_weight * math.log1p(cooc.pop[c]) / norm)
    assert cooc.blend_scores([hist, ()]) == [neigh, {}]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_worker_serves_the_ranking_that_was_evaluated(model_dir, cooc, backend):
    w = 3.0
    scorer = LMScorer(model_dir, backend, threads=1, fallback=cooc, cooc_weight=w)
    model = ItemLM.from_pretrained(model_dir).eval()
    vocab = ItemVocab.load(model_dir)
    histories = [[2, 5, 9], [11, 1], [40, 41, 3, 7]]
    want = blend_score_fn(lm_score_fn(model, 16), neighbour_score_fn(cooc, vocab), w)(histories)
    reqs = [ScoreRequest(f"u{j}", tuple(vocab.items[t] for t in h), 10, frozenset(vocab.items[t] for t in h))
            for j, h in enumerate(histories)]
    for row, (h, got) in enumerate(zip(histories, scorer.score(reqs))):
        ref = want[row].clone()
        ref[0] = -float("inf")
        ref[h] = -float("inf")
        order = torch.argsort(-ref, stable=True)[:10]
        assert [i for i, _ in got.items] == [vocab.items[int(t)] for t in order]
        for (i, s), t in zip(got.items, order):
            assert s == pytest.approx(float(ref[t]), abs=1e-4)
    assert any(cooc.neighbour_scores(r.history) for r in reqs), "the blend must have had something to add"


def test_blend_json_sets_the_weight_and_no_file_serves_the_lm_alone(model_dir, cooc, tmp_path):
    plain = LMScorer(model_dir, "torch", threads=1, fallback=cooc)
    assert plain.cooc_weight == 0.0
    req = [ScoreRequest("u", (item(2), item(3)), 10)]
    blended_dir = tmp_path / "m"
    shutil.copytree(model_dir, blended_dir)
    save_blend(blended_dir, 5.0, {0.0: 0.1, 5.0: 0.2})
    assert json.loads((blended_dir / "blend.json").read_text())["cooc_weight"] == 5.0
    blended = LMScorer(blended_dir, "torch", threads=1, fallback=cooc)
    assert blended.cooc_weight == 5.0 and blended.info()["cooc_weight"] == 5.0
    a, b = plain.score(req)[0].items, blended.score(req)[0].items
    assert a != b, "a weight of 5 on a dense co-occurrence corner must change the list"
    assert a == LMScorer(model_dir, "torch", threads=1, fallback=cooc, cooc_weight=0).score(req)[0].items


def _split(n_cases: int, n_items: int = 30, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    hists = [[int(x) for x in rng.choice(np.arange(1, n_items + 1), size=3, replace=False)] for _ in range(n_cases)]
    targets = [int(rng.choice(sorted(set(range(1, n_items + 1)) - set(h)))) for h in hists]   # never a seen item
    return Split("valid", [f"u{i}" for i in range(n_cases)], hists, targets, n_items)


def test_choose_weight_uses_the_counts_when_they_help_and_never_when_they_hurt():
    split = _split(200)
    target_of = {tuple(h): t for h, t in zip(split.histories, split.targets)}
    noise = torch.Generator().manual_seed(0)

    def lm(histories):          # weakly informative: the target gets +1 over unit noise
        s = torch.randn(len(histories), split.n_items + 1, generator=noise)
        for r, h in enumerate(histories):
            s[r, target_of[tuple(h)]] += 1.0
        return s

    def oracle(histories):      # the counts know the answer
        s = torch.zeros(len(histories), split.n_items + 1)
        for r, h in enumerate(histories):
            s[r, target_of[tuple(h)]] = 1.0
        return s

    def misleading(histories):  # the counts point at a wrong item
        s = torch.zeros(len(histories), split.n_items + 1)
        for r, h in enumerate(histories):
            s[r, target_of[tuple(h)] % split.n_items + 1] = 1.0
        return s

    w, tried = choose_weight(lm, oracle, split, batch_size=64, progress=False)
    assert w > 0 and tried[w] > tried[0.0]
    w, tried = choose_weight(lm, misleading, split, batch_size=64, progress=False)
    assert w == 0.0 and tried[0.0] == max(tried.values())


def test_evaluate_many_equals_evaluate_per_function_and_shares_each_batch():
    split = _split(150, seed=1)
    calls = []

    def base(histories):
        calls.append(len(histories))
        g = torch.Generator().manual_seed(sum(map(sum, histories)))
        return torch.randn(len(histories), split.n_items + 1, generator=g)

    shared = last_batch(base)
    extra = lambda h: shared(h) * 0.5 + torch.arange(split.n_items + 1).float() * 0.01   # noqa: E731
    both = evaluate_many({"a": shared, "b": extra}, split, (10,), batch_size=40, progress=False)
    assert len(calls) == 4, "one call of the shared part per batch (150 cases / 40)"
    assert both["a"]["NDCG@10"] == evaluate(base, split, (10,), batch_size=40, progress=False)["NDCG@10"]
    assert both["b"]["NDCG@10"] == evaluate(lambda h: base(h) * 0.5 + torch.arange(split.n_items + 1).float() * 0.01,
                                            split, (10,), batch_size=40, progress=False)["NDCG@10"]
