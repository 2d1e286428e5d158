"""The served ranking: the item LM's logits plus a weighted co-occurrence score, the weight chosen on validation.

    score(c) = logit_LM(c | history) + w * cooc(c | history)

``cooc`` is ``CooccurrenceScorer.neighbour_scores`` (the cosine-normalised co-occurrence of c with the user's recent
items, 0 for items that never co-occurred with them): the same object the worker keeps current online as the LM's
fallback. The two are complementary: the LM generalises across sequences, the counts remember exact pairs the LM
under-fits (a bought-together accessory). Adding to the logits rather than to the log-softmax changes nothing within
a row (log-softmax = logits - a per-row constant), so the worker can add the bonus in front of its top-k.

``w`` is chosen on the **validation** split only (grid ``WEIGHTS``, then one refinement around the best), with the
counts fitted on the training part (``items[:-2]``); ``w = 0`` (the LM alone) is always a candidate, so a blend that
does not help on validation is not used. The choice is saved as ``blend.json`` in the model directory
(``artifacts.BLEND_FILE``), which ``streamrec eval`` and the worker read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch

from streamrec.model.artifacts import BLEND_FILE
from streamrec.model.evaluate import ScoreFn, Split, evaluate_many
from streamrec.model.itemlm import ItemVocab
from streamrec.scoring import CooccurrenceScorer

log = logging.getLogger(__name__)

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


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


def blend_score_fn(lm_fn: ScoreFn, cooc_fn: ScoreFn, weight: float) -> ScoreFn:
    if not weight:
        return lm_fn
    return lambda histories: lm_fn(histories) + weight * cooc_fn(histories)


def fit_cooc(train_part: Mapping[str, Sequence[str]]) -> CooccurrenceScorer:
    """The counts an evaluation may use: fitted on the training part (``evaluate.train_sequences``: ``items[:-2]``
    of every user), exactly what the LM was trained on."""
    return CooccurrenceScorer().fit(train_part.values())


def choose_weight(lm_fn: ScoreFn, cooc_fn: ScoreFn, valid: Split, batch_size: int = 512,
                  progress: bool = True) -> tuple[float, dict[float, float]]:
    """The weight with the best validation NDCG@10 (ties: the smaller weight), and NDCG@10 per weight tried."""
    lm_fn, cooc_fn = last_batch(lm_fn), last_batch(cooc_fn)

    def grid(weights) -> dict[float, float]:
        fns = {w: blend_score_fn(lm_fn, cooc_fn, w) for w in weights}
        return {w: m["NDCG@10"] for w, m in evaluate_many(fns, valid, (10,), batch_size, progress=progress).items()}

    tried = grid(WEIGHTS)
    best = max(sorted(tried), key=lambda w: tried[w])
    if best:   # one refinement: halfway (geometrically) to the neighbours
        tried.update(grid([round(best * f, 4) for f in (0.7071, 1.4142)]))
        best = max(sorted(tried), key=lambda w: tried[w])
    return best, tried


def save_blend(model_dir: str | Path, weight: float, tried: Mapping[float, float]) -> None:
    (Path(model_dir) / BLEND_FILE).write_text(json.dumps(
        {"cooc_weight": weight, "chosen_on": "validation NDCG@10",
         "valid_ndcg10": {str(w): round(v, 6) for w, v in sorted(tried.items())}}, indent=2))
