"""Evaluation when a target repeats a history item: both conventions and the repeat/new split, hand-computed."""

from __future__ import annotations

import math

import torch

from streamrec.model.evaluate import build_vocab, evaluate, leave_one_out


def test_repeat_targets_reported_under_both_conventions():
    # u1's target "2" is already in its history (a repeat); u2's target "5" is new.
    seqs = {"u1": ["1", "2", "3", "4", "2"], "u2": ["1", "2", "3", "4", "5"]}
    vocab = build_vocab(seqs)                       # tokens: "1"->1 ... "5"->5
    split = leave_one_out(seqs, vocab, "test")

    def scores(histories):                          # item "2" best, then "5", then the rest
        s = torch.zeros(len(histories), len(vocab) + 1)
        s[:, vocab.id_to_token["2"]] = 3.0
        s[:, vocab.id_to_token["5"]] = 2.0
        return s

    m = evaluate(scores, split, k_list=(1, 10), progress=False, return_ranks=True)
    # u1: target "2" is ranked (seen items 1, 3, 4 removed; "5" scores lower) -> rank 1.
    # u2: seen items 1-4 removed, "5" is the only item left -> rank 1.
    assert m["ranks"] == [1, 1] and m["HR@1"] == 1.0
    assert m["repeat_targets"] == 1 and m["repeat_share"] == 0.5
    always, excluded = m["conventions"]["target_always_ranked"], m["conventions"]["seen_target_excluded"]
    assert always["HR@10"] == 1.0
    # published convention: u1's repeated target can never be found -> a miss; u2 unchanged
    assert excluded["HR@10"] == 0.5 and math.isclose(excluded["NDCG@10"], 0.5)
    assert m["by_target"]["repeat"]["HR@1"] == 1.0 and m["by_target"]["new"]["HR@1"] == 1.0


def test_no_repeat_no_extra_sections():
    seqs = {"u": ["1", "2", "3", "4", "5"]}
    split = leave_one_out(seqs, build_vocab(seqs), "test")
    m = evaluate(lambda h: torch.rand(len(h), 6), split, progress=False)
    assert m["repeat_targets"] == 0 and "conventions" not in m


def test_train_init_from_keeps_old_ids_and_weights_and_learns_new_items(tmp_path):
    """Learning from new interactions: continue from a previous model, new items appended, a new version."""
    from streamrec.model.datasets import synthetic
    from streamrec.model.train import TrainConfig, load_model_dir, train

    seqs = synthetic(120, 30, 12, seed=1)
    cfg = TrainConfig(hidden_size=16, num_layers=1, num_heads=1, max_len=12, epochs=2, batch_size=64,
                      num_threads=1, eval_every=1, valid_users=50)
    first = train(cfg, seqs, tmp_path / "v1", progress=False)
    old_model, old_vocab = load_model_dir(tmp_path / "v1")
    # new interactions: every user also meets two brand-new items
    more = {u: s + ["new-a", "new-b"] for u, s in seqs.items()}
    second = train(cfg, more, tmp_path / "v2", progress=False, init_from=tmp_path / "v1")
    model, vocab = load_model_dir(tmp_path / "v2")
    assert second["version"] != first["version"]
    assert second["data"]["init_from"] == str(tmp_path / "v1")
    assert vocab.items[:len(old_vocab.items)] == old_vocab.items           # old token ids unchanged
    assert {"new-a", "new-b"} <= set(vocab.items) and model.config.n_items == len(vocab)
    # training went on from the old weights, not from a fresh init: the old rows moved only a little
    old_rows = old_model.item_emb.weight[: len(old_vocab.items)]
    new_rows = model.item_emb.weight[: len(old_vocab.items)]
    train(cfg, more, tmp_path / "fresh", progress=False)
    fresh_model, _ = load_model_dir(tmp_path / "fresh")
    import torch
    assert torch.dist(old_rows, new_rows) < torch.dist(old_rows, fresh_model.item_emb.weight[: len(old_vocab.items)])
