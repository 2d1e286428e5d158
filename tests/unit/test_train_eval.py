"""Evaluation protocol, metrics, training loop, checkpoints and artefacts of the item LM (CPU, small and fast)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from streamrec.model.datasets import synthetic, write_sequences
from streamrec.model.evaluate import (build_vocab, cooc_score_fn, evaluate, hit_rate, leave_one_out, lm_score_fn,
                                metrics_from_ranks, mrr, ndcg, popularity_score_fn, ranks_from_scores,
                                train_sequences)
from streamrec.model.itemlm import ItemVocab
from streamrec.model.train import (TrainConfig, full_softmax_ce, length_batches, load_model_dir, pad_windows, train,
                             training_windows)

pytestmark = pytest.mark.usefixtures("one_thread")   # restores the thread count after this module


# --- metrics on hand-computed ranks -----------------------------------------------------------------------------------
def test_metrics_hand_computed():
    ranks = [1, 2, 11, 60]
    assert hit_rate(ranks, 10) == pytest.approx(0.5)
    assert hit_rate(ranks, 50) == pytest.approx(0.75)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3)) / 4)          # 0.407732
    assert ndcg(ranks, 10) == pytest.approx(0.4077324, abs=1e-6)
    assert ndcg(ranks, 50) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 60) / 4)           # 0.401894
    m = metrics_from_ranks(ranks, (10, 50))
    assert set(m) == {"HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR"}
    assert ndcg([1], 10) == 1.0 and ndcg([11], 10) == 0.0 and hit_rate([10], 10) == 1.0
    with pytest.raises(ValueError):
        hit_rate([0, 1], 10)


def test_ranks_ties_exclusion_padding():
    #                     pad   1    2    3    4    5
    scores = torch.tensor([[9.0, 0.5, 0.9, 0.5, 0.1, 0.7],
                           [9.0, 0.5, 0.9, 0.5, 0.1, 0.7]])
    targets = torch.tensor([1, 3])
    # padding column never counts; ties resolve in the target's favour: rank = 1 + #strictly greater
    assert ranks_from_scores(scores, targets).tolist() == [3, 3]
    # excluding seen items 2 and 5 lifts both targets to rank 1; excluding the target itself is ignored
    assert ranks_from_scores(scores, targets, [[2, 5], [2, 5, 3]]).tolist() == [1, 1]
    # NaN counts as -inf
    nan_scores = torch.tensor([[0.0, float("nan"), 0.2, 0.1, 0.0, 0.0]])
    assert ranks_from_scores(nan_scores, torch.tensor([3])).tolist() == [2]


# --- leave-one-out split rules ----------------------------------------------------------------------------------------
def test_leave_one_out_rules():
    seqs = {"a": ["1", "2", "3", "4", "5", "6"], "short": ["1", "2", "3", "4"], "b": ["6", "5", "4", "3", "2"]}
    vocab = build_vocab(seqs)
    assert vocab.items[1:] == ["1", "2", "3", "4", "5", "6"]
    test = leave_one_out(seqs, vocab, "test")
    valid = leave_one_out(seqs, vocab, "valid")
    assert test.users == ["a", "b"] and test.dropped_users == 1          # < 5 interactions: dropped
    tok = vocab.id_to_token
    assert test.targets == [tok["6"], tok["2"]]
    assert test.histories[0] == [tok[i] for i in "12345"]
    assert valid.targets == [tok["5"], tok["3"]]
    assert valid.histories[1] == [tok[i] for i in "654"]
    assert train_sequences(seqs)["a"] == ["1", "2", "3", "4"]            # training never sees valid/test items
    with pytest.raises(ValueError):
        leave_one_out(seqs, vocab, "train")


def test_seen_items_excluded_unless_keep_seen():
    seqs = {"u": ["1", "2", "3", "4", "5"]}
    vocab = build_vocab(seqs)
    split = leave_one_out(seqs, vocab, "test")        # history 1..4, target 5

    def loves_history(histories):                     # scores history items highest, the target next
        s = torch.zeros(len(histories), len(vocab) + 1)
        for r, h in enumerate(histories):
            s[r, h] = 10.0
            s[r, vocab.id_to_token["5"]] = 5.0
        return s

    assert evaluate(loves_history, split, progress=False, return_ranks=True)["ranks"] == [1]
    assert evaluate(loves_history, split, keep_seen=True, progress=False, return_ranks=True)["ranks"] == [5]


def test_unknown_target_ranked_last():
    seqs = {"u": ["1", "2", "3", "4", "9"]}
    vocab = ItemVocab(["1", "2", "3", "4"])
    split = leave_one_out(seqs, vocab, "test")
    m = evaluate(lambda h: torch.rand(len(h), 5), split, progress=False, return_ranks=True)
    assert split.unknown_targets == 1 and m["ranks"] == [5] and m["HR@50"] == 1.0


# --- training pieces --------------------------------------------------------------------------------------------------
def test_full_softmax_ce_matches_cross_entropy():
    torch.manual_seed(0)
    h = torch.randn(300, 8, requires_grad=True)
    table = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(1, 50, (300,))
    ours = full_softmax_ce(h, table, targets, chunk=64)
    ours.backward()
    gh, gt = h.grad.clone(), table.grad.clone()
    h.grad = table.grad = None
    logits = h @ table.T
    logits = logits.masked_fill(torch.arange(50) == 0, float("-inf"))
    ref = torch.nn.functional.cross_entropy(logits, targets)
    ref.backward()
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gt, table.grad, atol=1e-6)


def test_windows_padding_and_buckets():
    assert training_windows([[1, 2, 3]], 50) == [[1, 2, 3]]
    assert training_windows([[1]], 50) == []
    w = training_windows([list(range(1, 12))], 4)           # every item but the first is a target exactly once
    assert w == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [1, 2, 3]]
    assert sorted(t for x in w for t in x[1:]) == list(range(2, 12))
    ids, mask, tgt = pad_windows([[5, 6, 7], [8, 9]])
    assert ids.tolist() == [[5, 6], [0, 8]] and tgt.tolist() == [[6, 7], [8, 9]] and mask.tolist() == [[1, 1], [0, 1]]
    import random
    windows = [[1] * n for n in (2, 5, 2, 5, 3, 3)]
    batches = length_batches(windows, 2, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len({len(windows[i]) for i in b}) == 1 for b in batches)


# --- end to end on synthetic data ---------------------------------------------------------------------------------------
SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, batch_size=64, lr=3e-3, embedding_dropout=0.1,
             attention_dropout=0.0, patience=50, seed=1)


@pytest.fixture(scope="module")
def data():
    return synthetic(n_users=300, n_items=100, length=20, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("run")
    metrics = train(TrainConfig(epochs=6, **SMALL), data, out, progress=False, dataset_name="synthetic")
    return out, metrics


def test_model_beats_popularity_and_artefacts(trained, data):
    out, metrics = trained
    vocab = build_vocab(data)
    pop = evaluate(popularity_score_fn(train_sequences(data), vocab), leave_one_out(data, vocab, "test"),
                   progress=False)
    assert metrics["test"]["users"] == 300
    assert metrics["test"]["NDCG@10"] > pop["NDCG@10"] + 0.2, (metrics["test"], pop)
    # artefacts
    for name in ("model/config.json", "model/model.safetensors", "model/vocab.json", "train_config.json",
                 "metrics.json", "valid_ndcg.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["version"].startswith("itemlm-") and len(saved["history"]) == 6
    assert json.loads((out / "train_config.json").read_text())["version"] == saved["version"]
    assert json.loads((out / "model" / "config.json").read_text())["streamrec_version"] == saved["version"]
    assert (out / "valid_ndcg.png").read_bytes()[:4] == b"\x89PNG"


def test_training_writes_the_serving_warm_start_and_a_worker_starts_from_it(trained, data):
    """cooc.json and popularity.json: what the worker's LM scorer and its co-occurrence fallback start from."""
    from collections import Counter

    from streamrec.config import Settings
    from streamrec.scoring import ScoreRequest
    from streamrec.serve.lm import build_lm_scorer
    out, _ = trained
    counts = Counter(i for s in data.values() for i in s)
    assert json.loads((out / "popularity.json").read_text()) == dict(counts)
    scorer = build_lm_scorer(Settings(model_dir=str(out), backend="torch", max_batch_size=2))
    [empty] = scorer.score([ScoreRequest("new", (), 3)])
    assert empty.fallback and "popularity" in empty.fallback_reason
    assert [counts[i] for i, _ in empty.items] == [n for _, n in counts.most_common(3)]   # (ties in any order)
    first = data["u0"][0]
    assert scorer.fallback.pop[first] == counts[first]        # the fallback is warm: it knows what followed
    assert scorer.fallback.score_one(ScoreRequest("new", (first,), 5))


def test_cooc_baseline_dense_scores_hand_computed():
    """Three sequences a->b, a->b, a->c: pop a=3, b=2, c=1 (max 3); cooc(a,b)=2, cooc(a,c)=1. After history [a]:
    score(c) = cooc(a,c) / sqrt(pop(a) pop(c)) + 0.05 * ln(1 + pop(c)) / ln(1 + max pop)
      b: 2 / sqrt(3 * 2) + 0.05 * ln 3 / ln 4 = 0.816497 + 0.039624 = 0.856121
      c: 1 / sqrt(3 * 1) + 0.05 * ln 2 / ln 4 = 0.577350 + 0.025000 = 0.602350
      a (seen, no self co-occurrence): its popularity term alone, 0.05 * ln 4 / ln 4 = 0.05
      d (never seen): 0; padding: -inf."""
    from streamrec.scoring import CooccurrenceScorer
    vocab = ItemVocab(["a", "b", "c", "d"])
    scorer = CooccurrenceScorer(popularity_weight=0.05).fit([["a", "b"], ["a", "b"], ["a", "c"]])
    dense = cooc_score_fn(scorer, vocab)([[vocab.id_to_token["a"]]])[0]
    assert dense[0] == float("-inf")
    assert dense[1:].tolist() == pytest.approx([0.05, 0.856121, 0.602350, 0.0], abs=1e-6)


def test_save_load_round_trip_identical_scores(trained, data):
    out, metrics = trained
    model, vocab = load_model_dir(out)
    again, vocab2 = load_model_dir(out / "model")
    assert vocab.items == vocab2.items
    split = leave_one_out(data, vocab, "test")
    h = split.histories[:32]
    assert torch.equal(lm_score_fn(model, 50)(h), lm_score_fn(again, 50)(h))
    # and the reloaded best model reproduces the reported test metrics exactly: alone, and blended as served
    m = evaluate(lm_score_fn(model, 50), split, (10, 20, 50), progress=False)
    assert m["NDCG@10"] == pytest.approx(metrics["test_lm_only"]["NDCG@10"], abs=1e-12)
    from streamrec.model.artifacts import read_blend
    from streamrec.model.blend import blend_parts, blend_score_fn, saved_weights
    w = saved_weights(read_blend(out))
    assert w["cooc"] == metrics["blend"]["cooc_weight"] and w["text"] == 0.0   # an id-only model: no title term
    served = blend_score_fn(lm_score_fn(model, 50), blend_parts(vocab, train_sequences(data)), w)
    m = evaluate(served, split, (10, 20, 50), progress=False)
    assert m["NDCG@10"] == pytest.approx(metrics["test"]["NDCG@10"], abs=1e-12)


def test_checkpoint_resume_continues_like_an_uninterrupted_run(tmp_path):
    data = synthetic(n_users=120, n_items=60, length=12, seed=5)
    straight = train(TrainConfig(epochs=3, **SMALL), data, tmp_path / "a", progress=False)
    train(TrainConfig(epochs=1, **SMALL), data, tmp_path / "b", progress=False)
    first = json.loads((tmp_path / "b" / "metrics.json").read_text())
    resumed = train(TrainConfig(epochs=3, **SMALL), data, tmp_path / "b", resume=True, progress=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["version"] == first["version"]
    for x, y in zip(straight["history"], resumed["history"]):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["valid"]["NDCG@10"] == pytest.approx(y["valid"]["NDCG@10"], abs=1e-6)
    assert resumed["test"]["NDCG@10"] == pytest.approx(straight["test"]["NDCG@10"], abs=1e-6)
    with pytest.raises(FileNotFoundError):
        train(TrainConfig(epochs=1, **SMALL), data, tmp_path / "missing", resume=True, progress=False)


def test_cli_train_and_eval(tmp_path, data, capsys):
    from streamrec.cli import main
    path = write_sequences({u: s for u, s in list(data.items())[:120]}, tmp_path / "syn.txt")
    assert main(["train", str(path), "--out", str(tmp_path / "m"), "--epochs", "2", "--hidden-size", "16",
                 "--num-layers", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(path), "--model", str(tmp_path / "m"), "--json", str(tmp_path / "m.json"),
                 "--quiet"]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["users"] == 120 and m["split"] == "test" and "NDCG@10" in m
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())["test"]
    assert m["NDCG@10"] == pytest.approx(saved["NDCG@10"], abs=1e-12)
    capsys.readouterr()
    assert main(["eval", str(path), "--baseline", "popularity", "--split", "valid", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "valid" and out["scorer"] == "popularity"


def test_hidden_dropout_only_in_training_and_id_dropout_needs_text(data, tmp_path):
    from streamrec.model.train import add_hidden_dropout
    from streamrec.model.itemlm import ItemLM
    cfg = TrainConfig(hidden_size=16, num_layers=2, embedding_dropout=0.0, attention_dropout=0.0)
    model = ItemLM(cfg.model_config(30))
    ids = torch.randint(1, 31, (3, 6))
    mask = torch.ones_like(ids)
    model.eval()
    before = model.hidden_states(ids, mask)
    handles = add_hidden_dropout(model, 0.5)
    assert len(handles) == 4
    assert torch.equal(model.hidden_states(ids, mask), before)            # eval: no effect
    model.train()
    torch.manual_seed(0)
    a = model.hidden_states(ids, mask)
    torch.manual_seed(1)
    assert not torch.equal(a, model.hidden_states(ids, mask))            # training: active
    with pytest.raises(ValueError):
        train(TrainConfig(epochs=1, id_dropout=0.3, **SMALL), data, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_the_history_length_is_derived_from_the_data_unless_given():
    short = [4] * 90 + [41] * 10                       # Amazon-like: p99 41 -> 50 (never below)
    assert TrainConfig().derive(short).max_len == 50
    assert TrainConfig().derive([60] * 98 + [131, 131]).max_len == 140   # p99 rounded up to tens
    assert TrainConfig().derive([100] * 50 + [1254] * 50).max_len == 200   # MovieLens-like: capped
    assert TrainConfig(max_len=30).derive([1000]).max_len == 30           # given: kept
    assert TrainConfig().derive([]).max_len == 50


def test_the_batch_is_a_number_of_positions_unless_given():
    # 128 windows of 50 (the Amazon sets, as before); long MovieLens windows: fewer per step, as many positions
    assert TrainConfig().derive([30] * 100).batch_size == 128
    assert TrainConfig().derive([1254] * 100).batch_size == 32
    assert TrainConfig(max_len=400).derive([]).batch_size == 16
    assert TrainConfig(batch_size=64).derive([1254] * 100).batch_size == 64   # given: kept
    assert TrainConfig().derive([30]).derive([1254]) == TrainConfig().derive([30])   # derived once, then kept


def test_titles_turn_the_text_recipe_on_unless_refused(tmp_path, monkeypatch):
    from streamrec.cli import main
    from streamrec.model import train as train_module
    from streamrec.model.datasets import write_sequences

    seen = []

    def record(cfg, *args, **kwargs):   # stands in for training: the recipe is all this test wants
        seen.append(cfg.use_text)
        raise SystemExit(0)

    monkeypatch.setattr(train_module, "train", record)
    data = write_sequences(synthetic(n_users=20, n_items=10, length=6), tmp_path / "d.txt")
    titles = tmp_path / "t.tsv"
    titles.write_text("".join(f"{i}\tasin{i}\titem {i}\n" for i in range(1, 11)))
    for extra, want in (([], False), (["--titles", str(titles)], True),
                        (["--titles", str(titles), "--no-use-text"], False)):
        with pytest.raises(SystemExit):
            main(["train", str(data), "--out", str(tmp_path / "o"), *extra])
        assert seen[-1] is want


def test_eval_cli_ranks_as_served_with_the_saved_or_a_newly_chosen_blend(trained, data, tmp_path):
    from streamrec.cli import main
    from streamrec.model.datasets import write_sequences

    out, metrics = trained
    path = write_sequences(data, tmp_path / "d.txt")
    saved = tmp_path / "saved.json"
    assert main(["eval", str(path), "--model", str(out), "--quiet", "--num-threads", "1", "--json", str(saved)]) == 0
    m = json.loads(saved.read_text())
    assert m["NDCG@10"] == pytest.approx(metrics["test"]["NDCG@10"], abs=1e-12)   # what train reported as served
    if metrics["blend"]["cooc_weight"]:
        assert m["lm_only"]["NDCG@10"] == pytest.approx(metrics["test_lm_only"]["NDCG@10"], abs=1e-12)
    chosen = tmp_path / "chosen.json"
    assert main(["eval", str(path), "--model", str(out), "--quiet", "--num-threads", "1", "--blend", "choose",
                 "--json", str(chosen)]) == 0
    assert json.loads(chosen.read_text())["NDCG@10"] == pytest.approx(m["NDCG@10"], abs=1e-12)   # same choice
    none = tmp_path / "none.json"
    assert main(["eval", str(path), "--model", str(out), "--quiet", "--num-threads", "1", "--blend", "none",
                 "--json", str(none)]) == 0
    assert json.loads(none.read_text())["NDCG@10"] == pytest.approx(metrics["test_lm_only"]["NDCG@10"], abs=1e-12)
