"""The served ranking = LM logits + w x co-occurrence (model/blend.py): chosen on validation, served identically."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from streamrec.model.blend import (blend_record, blend_score_fn, choose_weights, last_batch, neighbour_score_fn,
                                   save_blend, young_items, young_text_score_fn)
from streamrec.model.evaluate import Split, evaluate, evaluate_many, lm_score_fn
from streamrec.model.export import export
from streamrec.model.itemlm import ItemLM, ItemLMConfig, ItemVocab
from streamrec.scoring import CooccurrenceScorer, ScoreRequest
from streamrec.serve.lm import LMScorer

N_ITEMS = 60
pytestmark = pytest.mark.usefixtures("one_thread")


def item(i: int) -> str:
    return f"sku-{i}"


TEXT_DIM = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("itemlm-blend")
    torch.manual_seed(1)
    model = ItemLM(ItemLMConfig(n_items=N_ITEMS, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, intermediate_size=32, max_position_embeddings=16,
                                text_dim=TEXT_DIM))
    with torch.no_grad():
        model.item_text.normal_()
        model.item_text[N_ITEMS - 5:] = 0   # tokens 55-60 have no title
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
    """Both terms: co-occurrence from the fallback, titles for the young items (fewer than 5 counted: here every
    item from 30 on, counted 0 times, and items 1-29 counted 3 or 9 times)."""
    wc, wt = 3.0, 4.0
    scorer = LMScorer(model_dir, backend, threads=1, fallback=cooc, cooc_weight=wc, text_weight=wt)
    model = ItemLM.from_pretrained(model_dir).eval()
    vocab = ItemVocab.load(model_dir)
    counts = torch.zeros(N_ITEMS + 1)
    for t in range(1, 30):
        counts[t] = 3 if t % 2 else 9
        scorer.blend.count(t, int(counts[t]))
    young = young_items(counts, model.item_text)
    assert young[30:N_ITEMS - 5].all() and not young[N_ITEMS - 5:].any() and young[1:30].sum() == 15
    parts = {"cooc": neighbour_score_fn(cooc, vocab), "text": young_text_score_fn(model.item_text, young)}
    histories = [[2, 5, 9], [11, 1], [40, 41, 3, 7], [33]]
    want = blend_score_fn(lm_score_fn(model, 16), parts, {"cooc": wc, "text": wt})(histories)
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


def test_an_item_stops_being_young_once_the_worker_has_counted_enough(model_dir, cooc):
    scorer = LMScorer(model_dir, "torch", threads=1, fallback=cooc, text_weight=1.0)
    assert 45 in scorer.blend.young()
    for _ in range(5):
        scorer.observe((item(1),), item(45))
    assert 45 not in scorer.blend.young()


def test_blend_json_sets_the_weights_and_no_file_serves_the_lm_alone(model_dir, cooc, tmp_path):
    plain = LMScorer(model_dir, "torch", threads=1, fallback=cooc)
    assert plain.info()["cooc_weight"] == 0.0 and plain.info()["text_weight"] == 0.0
    req = [ScoreRequest("u", (item(2), item(3)), 10)]
    blended_dir = tmp_path / "m"
    shutil.copytree(model_dir, blended_dir)
    save_blend(blended_dir, blend_record({"cooc": 5.0, "text": 0.5}, {"cooc": {0.0: 0.1, 5.0: 0.2}}))
    assert json.loads((blended_dir / "blend.json").read_text())["cooc_weight"] == 5.0
    blended = LMScorer(blended_dir, "torch", threads=1, fallback=cooc)
    assert blended.info()["cooc_weight"] == 5.0 and blended.info()["text_weight"] == 0.5
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

    w, tried = choose_weights(lm, {"cooc": oracle}, split, batch_size=64, progress=False)
    assert w["cooc"] > 0 and tried["cooc"][w["cooc"]] > tried["cooc"][0.0]
    w, tried = choose_weights(lm, {"cooc": misleading, "text": oracle}, split, batch_size=64, progress=False)
    assert w["cooc"] == 0.0 and tried["cooc"][0.0] == max(tried["cooc"].values())
    assert w["text"] > 0, "each term is chosen in turn"


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


def test_the_blend_setting_turns_the_saved_blend_off(model_dir, tmp_path):
    from streamrec.config import Settings
    from streamrec.serve.lm import build_lm_scorer

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    save_blend(d, blend_record({"cooc": 5.0, "text": 1.0}, {}))
    on = build_lm_scorer(Settings(model_dir=str(d), backend="onnx"))
    off = build_lm_scorer(Settings(model_dir=str(d), backend="onnx", blend=False))
    assert (on.blend.cooc_weight, on.blend.text_weight) == (5.0, 1.0)
    assert (off.blend.cooc_weight, off.blend.text_weight) == (0.0, 0.0)
