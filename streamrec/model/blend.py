"""The served ranking: the item LM's logits plus weighted bonuses, the weights chosen on validation.

    score(c) = logit_LM(c | history)
               + w_cooc * cooc(c | history)                          every item
               + w_text * cos(title(c), mean title of the last 5)     only the 5 most similar items with fewer than
                                                                      young_below interactions

``cooc`` is ``CooccurrenceScorer.neighbour_scores`` (the cosine-normalised co-occurrence of c with the user's recent
items, 0 for items that never co-occurred with them): the same object the worker keeps current online as the LM's
fallback. The two are complementary: the LM generalises across sequences, the counts remember exact pairs the LM
under-fits (a bought-together accessory).

The title term is the cold-start blend (text-aware models only): an item the model has seen fewer than
``young_below`` times -- above all one that arrived on the items topic after training -- has an embedding learnt
from too little, so its title's similarity to what the user just chose stands in until it has interactions.

Adding to the logits rather than to the log-softmax changes nothing within a row (log-softmax = logits - a per-row
constant), so the worker adds the bonuses in front of its top-k (``serve.lm.LMScorer``).

The weights are chosen on the **validation** split only: one grid per term (``WEIGHTS``, then a refinement around
the best), in turn, with the counts fitted on the training part (``items[:-2]``). A weight of 0 is always a
candidate, so a term that does not help on validation is not used. The choice is saved as ``blend.json`` in the
model directory (``artifacts.BLEND_FILE``), which ``streamrec eval`` and the worker read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch

from streamrec.model.artifacts import BLEND_FILE
from streamrec.model.evaluate import ScoreFn, Split, evaluate_many, popularity_counts, text_similarity_score_fn
from streamrec.model.itemlm import PAD, ItemVocab
from streamrec.scoring import CooccurrenceScorer

log = logging.getLogger(__name__)

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
YOUNG_BELOW = 5      # interactions before an item's own embedding is trusted alone (the 5-core threshold)
TEXT_WINDOW = 5      # history items whose titles make the query
TEXT_TOP = 5         # young items per request that get the title bonus, the most similar ones (5 beat 20 on the
                     #   ml-latest-small validation split: a bonus for many young items buries the warm targets)


def last_batch(fn: ScoreFn) -> ScoreFn:
    """``fn`` memoised for the most recent batch (the same list object): ``evaluate_many`` hands every function the
    same batch, so the parts of a blend grid are computed once per batch."""
    memo: list = [None, None]

    def score(histories: list[list[int]]) -> torch.Tensor:
        if memo[0] is not histories:
            memo[0], memo[1] = histories, fn(histories)
        return memo[1]

    return score


def neighbour_score_fn(scorer: CooccurrenceScorer, vocab: ItemVocab) -> ScoreFn:
    """[B, n_items + 1]: each history's co-occurrence neighbour scores, 0 for every other item."""
    def score(histories: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(len(histories), len(vocab) + 1)
        tok = vocab.id_to_token
        for row, hist in enumerate(histories):
            for item, s in scorer.neighbour_scores([vocab.items[t] for t in hist]).items():
                t = tok.get(item)
                if t is not None:
                    out[row, t] = s
        return out

    return score


def young_items(counts: torch.Tensor, item_text: torch.Tensor, young_below: int = YOUNG_BELOW) -> torch.Tensor:
    """[n_items + 1] bool: items with a title and fewer than ``young_below`` interactions in ``counts``."""
    young = (counts < young_below) & (item_text.abs().sum(dim=1) > 0)
    young[PAD] = False
    return young


def young_text_score_fn(item_text: torch.Tensor, young: torch.Tensor, window: int = TEXT_WINDOW,
                        top: int = TEXT_TOP) -> ScoreFn:
    """[B, n_items + 1]: title similarity to the last ``window`` history items, for the ``top`` most similar
    ``young`` items of each history only (0 elsewhere)."""
    sim = text_similarity_score_fn(item_text, window)
    n_young = int(young.sum())

    def score(histories: list[list[int]]) -> torch.Tensor:
        s = sim(histories).masked_fill(~young, float("-inf"))
        out = torch.zeros_like(s)
        if n_young:
            vals, idx = torch.topk(s, min(top, n_young), dim=1)
            out.scatter_(1, idx, vals)
        return out

    return score


def blend_score_fn(lm_fn: ScoreFn, parts: Mapping[str, ScoreFn], weights: Mapping[str, float]) -> ScoreFn:
    """LM logits + sum of weight x part (parts with weight 0 are not computed)."""
    used = [(parts[name], w) for name, w in weights.items() if w and name in parts]
    if not used:
        return lm_fn

    def score(histories: list[list[int]]) -> torch.Tensor:
        out = lm_fn(histories).clone()
        for fn, w in used:
            out += w * fn(histories)
        return out

    return score


def fit_cooc(train_part: Mapping[str, Sequence[str]]) -> CooccurrenceScorer:
    """The counts an evaluation may use: fitted on the training part (``evaluate.train_sequences``: ``items[:-2]``
    of every user), exactly what the LM was trained on."""
    return CooccurrenceScorer().fit(train_part.values())


def blend_parts(vocab: ItemVocab, train_part: Mapping[str, Sequence[str]],
                item_text: torch.Tensor | None = None) -> dict[str, ScoreFn]:
    """The bonus terms of a model trained on ``train_part``: the co-occurrence one always, the title one when the
    model has item text."""
    parts = {"cooc": neighbour_score_fn(fit_cooc(train_part), vocab)}
    if item_text is not None:
        young = young_items(popularity_counts(train_part.values(), vocab), item_text)
        parts["text"] = young_text_score_fn(item_text, young)
    return parts


def choose_weights(lm_fn: ScoreFn, parts: Mapping[str, ScoreFn], valid: Split, batch_size: int = 512,
                   progress: bool = True) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Per term in turn (the others fixed at their chosen weight): the weight with the best validation NDCG@10
    (ties: the smaller). Returns the weights and, per term, NDCG@10 per weight tried."""
    lm_fn = last_batch(lm_fn)
    parts = {name: last_batch(fn) for name, fn in parts.items()}
    weights = {name: 0.0 for name in parts}
    tried_all: dict[str, dict[float, float]] = {}
    for name in parts:
        def grid(ws) -> dict[float, float]:
            fns = {w: blend_score_fn(lm_fn, parts, {**weights, name: w}) for w in ws}
            return {w: m["NDCG@10"] for w, m in evaluate_many(fns, valid, (10,), batch_size,
                                                              progress=progress).items()}
        tried = grid(WEIGHTS)
        best = max(sorted(tried), key=lambda w: tried[w])
        if best:   # one refinement: halfway (geometrically) to the neighbours
            tried.update(grid([round(best * f, 4) for f in (0.7071, 1.4142)]))
            best = max(sorted(tried), key=lambda w: tried[w])
        weights[name] = best
        tried_all[name] = tried
        log.info("blend: %s weight %s (validation NDCG@10 %.4f; without it %.4f)", name, best, tried[best],
                 tried[0.0])
    return weights, tried_all


def blend_record(weights: Mapping[str, float], tried: Mapping[str, Mapping[float, float]]) -> dict:
    return {"cooc_weight": weights.get("cooc", 0.0), "text_weight": weights.get("text", 0.0),
            "young_below": YOUNG_BELOW, "text_window": TEXT_WINDOW, "text_top": TEXT_TOP,
            "chosen_on": "validation NDCG@10",
            "valid_ndcg10": {name: {str(w): round(v, 6) for w, v in sorted(t.items())} for name, t in tried.items()}}


def save_blend(model_dir: str | Path, record: Mapping) -> None:
    (Path(model_dir) / BLEND_FILE).write_text(json.dumps(record, indent=2))


def saved_weights(record: Mapping) -> dict[str, float]:
    return {"cooc": float(record.get("cooc_weight", 0.0)), "text": float(record.get("text_weight", 0.0))}


def cold_start_blends(model, vocab: ItemVocab, sequences: Mapping[str, Sequence[str]], cold: Sequence[str],
                      record: Mapping, max_len: int = 50, batch_size: int = 512,
                      progress: bool = True) -> tuple[dict, dict]:
    """For ``streamrec coldstart``: the served blend of a cold-start run, and the same with a title weight chosen
    for new items.

    ``streamrec train --cold-items`` chooses its weights on validation cases whose target it knows, so the title
    term, whose job is items nobody has interacted with yet, meets none of the held-out items there and is mostly
    left at 0. Here it is chosen again on the whole validation split of the grown model (``model_cold``), where
    held-out items are targets in their natural share (a user's second-to-last item; the test uses the last one),
    the co-occurrence weight kept. Returns ({label: wrap(score_fn) -> score_fn}, info); the caller evaluates each
    label on the cold test cases and on the warm ones.
    """
    from streamrec.model.evaluate import leave_one_out, lm_score_fn, train_sequences

    weights = saved_weights(record)
    cold = set(cold)
    train_part = {u: [i for i in s if i not in cold] for u, s in train_sequences(sequences).items()}
    parts = blend_parts(vocab, train_part, model.item_text if model.config.text_dim else None)
    blends = {"served": weights}
    info: dict = {"saved_weights": weights}
    if "text" in parts:
        valid = leave_one_out(sequences, vocab, "valid")
        base = blend_score_fn(lm_score_fn(model, max_len), parts, {**weights, "text": 0.0})
        chosen, tried = choose_weights(base, {"text": parts["text"]}, valid, batch_size, progress)
        blends["served_new_item_text"] = {**weights, "text": chosen["text"]}
        info.update(valid_cases=len(valid), cold_valid_cases=sum(vocab.items[t] in cold for t in valid.targets),
                    new_item_text_weight=chosen["text"],
                    new_item_text_valid_ndcg10={str(w): round(v, 6) for w, v in sorted(tried["text"].items())})
    return {label: (lambda fn, w=w: blend_score_fn(fn, parts, w)) for label, w in blends.items()}, info
