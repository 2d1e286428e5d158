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
