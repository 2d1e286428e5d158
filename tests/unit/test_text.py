"""Offline sentence embeddings (bundled all-MiniLM-L6-v2) and text-aware cold start of the item LM."""

from __future__ import annotations

import os

import pytest
import torch

from streamrec.model import text
from streamrec.model.datasets import synthetic, synthetic_titles
from streamrec.model.evaluate import lm_score_fn, ranks_from_scores
from streamrec.model.train import TrainConfig, load_model_dir, train

pytestmark = pytest.mark.usefixtures("one_thread")   # restores the thread count after this module


def test_bundled_model_is_found_offline():
    path = text.bundled_model_dir()
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


def test_embed_two_sentences_offline_similar_closer(tmp_path):
    sentences = ["red matte lipstick for lips", "a matte lipstick in red", "waterproof hiking boots for the trail"]
    emb = text.embed_texts(sentences, cache_dir=tmp_path, progress=False)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3, sim


def test_cache_is_keyed_by_texts(tmp_path, monkeypatch):
    first = text.embed_texts(["espresso grinder", "dog food"], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def no_encoder(*a, **k):
        raise AssertionError("cache miss: the encoder was loaded")

    monkeypatch.setattr(text, "load_encoder", no_encoder)
    again = text.embed_texts(["espresso grinder", "dog food"], cache_dir=tmp_path, progress=False)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError):              # different texts -> different key -> encoder needed
        text.embed_texts(["dog food", "espresso grinder"], cache_dir=tmp_path, progress=False)


def test_local_model_dir_and_missing_dir(tmp_path):
    emb = text.embed_texts(["yoga mat"], cache_dir=tmp_path, model=text.bundled_model_dir(), progress=False)
    assert emb.shape == (1, 384)
    with pytest.raises(FileNotFoundError):
        text.embed_texts(["yoga mat"], model=tmp_path / "nope", use_cache=False, progress=False)


def test_cold_start_item_ranks_above_random_for_users_of_its_theme(tmp_path):
    """A brand-new item, never in training, known only by a themed title, is ranked high for users whose history has
    that theme, and low for the others."""
    n_items, n_clusters = 100, 5
    seqs = synthetic(n_users=300, n_items=n_items, length=20, n_clusters=n_clusters, seed=3)
    titles = synthetic_titles(n_items, n_clusters)
    cfg = TrainConfig(hidden_size=32, num_layers=1, num_heads=2, batch_size=64, lr=3e-3, embedding_dropout=0.1,
                      attention_dropout=0.0, epochs=6, patience=50, seed=0, use_text=True)
    train(cfg, seqs, tmp_path / "run", titles=titles, progress=False)
    model, vocab = load_model_dir(tmp_path / "run")

    per = n_items // n_clusters
    themes = {c: titles[str(1 + c * per)].split(" model")[0] for c in range(n_clusters)}
    new_titles = {c: f"{themes[c]} model deluxe new arrival" for c in range(n_clusters)}
    tokens = list(model.add_items(n_clusters))
    model.set_item_text(tokens, text.embed_texts([new_titles[c] for c in range(n_clusters)], cache_dir=tmp_path,
                                                 progress=False))
    score = lm_score_fn(model, 50)

    def cluster_of(item: str) -> int:
        return (int(item) - 1) // per

    users, hists = [], []
    for user, seq in seqs.items():
        recent = seq[-5:]
        c = cluster_of(recent[-1])
        if sum(cluster_of(i) == c for i in recent) >= 4:     # users clearly inside one theme right now
            users.append(c)
            hists.append(vocab.encode(seq))
    scores = score(hists)
    own, other = [], []
    gen = torch.Generator().manual_seed(0)
    for cc, tok in enumerate(tokens):
        ranks = ranks_from_scores(scores, torch.full((len(hists),), tok), hists, ties="random", generator=gen)
        for c, r in zip(users, ranks.tolist()):
            (own if cc == c else other).append(r)
    n_ranked = n_items + n_clusters
    random_rank = (n_ranked + 1) / 2
    mean_own = sum(own) / len(own)
    mean_other = sum(other) / len(other)
    assert len(own) > 50
    assert mean_own < 0.5 * random_rank, (mean_own, random_rank)    # far above random
    assert mean_own < mean_other, (mean_own, mean_other)              # and specific to the user's theme


def test_id_only_model_cannot_place_cold_items(tmp_path):
    """Control for the test above: without text the new items all score the same (the model cannot rank them)."""
    seqs = synthetic(n_users=100, n_items=50, length=12, seed=4)
    cfg = TrainConfig(hidden_size=16, num_layers=1, num_heads=2, epochs=1, batch_size=64, seed=0)
    train(cfg, seqs, tmp_path / "run", progress=False)
    model, vocab = load_model_dir(tmp_path / "run")
    tokens = list(model.add_items(3))
    with pytest.raises(ValueError):
        model.set_item_text(tokens, torch.zeros(3, 384))
    s = lm_score_fn(model, 50)([vocab.encode(seqs["u0"])])[0]
    assert torch.equal(s[tokens], torch.zeros(3))


def test_coldstart_reports_the_served_blend_and_its_title_term_lifts_new_items(tmp_path, capsys):
    """`streamrec coldstart` evaluates the ranking the worker serves (blend.json): with a title term, items held out
    of training rank higher among all items than from the model alone."""
    import json

    from streamrec.cli import main
    from streamrec.model.blend import blend_record, save_blend
    from streamrec.model.datasets import write_sequences

    seqs = synthetic(n_users=300, n_items=100, length=20, n_clusters=5, seed=3)
    titles = synthetic_titles(100, 5)
    cfg = TrainConfig(hidden_size=32, num_layers=1, num_heads=2, batch_size=64, lr=3e-3, embedding_dropout=0.1,
                      attention_dropout=0.0, epochs=4, patience=50, seed=0, use_text=True, cold_items=0.1)
    run = tmp_path / "run"
    metrics = train(cfg, seqs, run, titles=titles, progress=False)
    assert set(metrics["blend"]) == {"cooc_weight", "text_weight", "young_below"}
    save_blend(run / "model", blend_record({"cooc": 0.0, "text": 8.0}, {}))
    data = write_sequences(seqs, tmp_path / "data.txt")
    assert main(["coldstart", str(data), "--run", str(run), "--quiet", "--num-threads", "1",
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())[str(run)]
    everything = report["all_items"]
    assert report["cases"] > 10
    assert everything["served"]["HR@20"] > everything["model"]["HR@20"], everything
    assert set(report["warm_test"]) >= {"model", "served"} and report["warm_test"]["model"]["users"] > 100
    chosen = report["blend"]["new_item_text_weight"]
    assert main(["coldstart", str(data), "--run", str(run), "--quiet", "--num-threads", "1", "--save-blend"]) == 0
    assert json.loads((run / "model" / "blend.json").read_text())["text_weight"] == chosen
