"""Full-ranking, leave-one-out evaluation of any next-item scorer (the item LM, baselines, the ONNX scorer).

Protocol (the one of SASRec / S3-Rec / ICLRec, see ``docs/evaluation.md``):
  * users with fewer than ``min_interactions`` (5) interactions are dropped;
  * the last item of each user is the **test** target (history = every earlier item), the second-to-last is the
    **validation** target (history = every item before it); training may only use ``items[:-2]``;
  * **every** item of the catalogue is scored (no sampled negatives); the items of the user's history are removed
    from the ranking unless ``keep_seen=True`` (the target itself is always ranked, even if it occurred earlier;
    when some targets repeat a history item the result also has the published baselines' convention, where such a
    target counts as a miss, and the repeat vs new split: ``repeat_report``);
  * rank = 1 + number of ranked items with a strictly greater score (ties are resolved in the target's favour);
  * HR@k = mean(rank <= k), NDCG@k = mean(1/log2(rank + 1) if rank <= k else 0), MRR = mean(1/rank).

A *score function* takes a batch of token histories (``list[list[int]]``, token ids 1..n, oldest first) and returns
a ``[batch, n_items + 1]`` float tensor (column 0 = padding, ignored). ``evaluate(score_fn, split)`` does the rest,
so the same code evaluates the torch model (``lm_score_fn``), popularity (``popularity_score_fn``), the
co-occurrence scorer (``cooc_score_fn``) and, later, an ONNX session.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch

from streamrec.model.itemlm import PAD, ItemVocab, left_pad

ScoreFn = Callable[[list[list[int]]], torch.Tensor]

MIN_INTERACTIONS = 5


# --- metrics: pure functions of the 1-based ranks of the targets ----------------------------------------------------
def _as_ranks(ranks: Sequence[int] | torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(ranks, dtype=torch.float64)
    if r.numel() and r.min() < 1:
        raise ValueError("ranks are 1-based")
    return r


def hit_rate(ranks: Sequence[int] | torch.Tensor, k: int) -> float:
    """Share of targets ranked in the top k."""
    r = _as_ranks(ranks)
    return float((r <= k).double().mean()) if r.numel() else 0.0


def ndcg(ranks: Sequence[int] | torch.Tensor, k: int) -> float:
    """NDCG@k with one relevant item per user: 1/log2(rank + 1) inside the top k, else 0 (ideal DCG = 1)."""
    r = _as_ranks(ranks)
    if not r.numel():
        return 0.0
    gain = torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))
    return float(gain.mean())


def mrr(ranks: Sequence[int] | torch.Tensor) -> float:
    """Mean reciprocal rank over the full ranking (not truncated)."""
    r = _as_ranks(ranks)
    return float((1.0 / r).mean()) if r.numel() else 0.0


def metrics_from_ranks(ranks: Sequence[int] | torch.Tensor, k_list: Iterable[int] = (10, 50)) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in k_list:
        out[f"HR@{k}"] = hit_rate(ranks, k)
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    out["MRR"] = mrr(ranks)
    return out


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor,
                      exclude: Sequence[Sequence[int]] | None = None, candidates: torch.Tensor | None = None,
                      ties: str = "optimistic", generator: torch.Generator | None = None) -> torch.Tensor:
    """1 + number of ranked items scored strictly higher than the target, per row.

    ``scores``: [B, n_items + 1] (column 0 = padding, never ranked); ``targets``: [B] token ids;
    ``exclude``: per row, token ids removed from the ranking (the target itself is never removed);
    ``candidates``: optional [n_items + 1] bool mask, rank only among these items (plus the target);
    ``ties``: "optimistic" (default, the protocol: equal scores do not push the target down) or "random" (the
    target takes a uniformly random place among the items with its score — for scorers that cannot tell items
    apart, e.g. an id-only model facing cold-start items). NaN scores count as -inf.
    """
    scores = torch.nan_to_num(scores.detach().to(torch.float32), nan=float("-inf"))
    targets = torch.as_tensor(targets, dtype=torch.long, device=scores.device)
    batch = torch.arange(scores.shape[0], device=scores.device)
    target_score = scores[batch, targets][:, None]
    ranked = torch.ones_like(scores, dtype=torch.bool)
    if candidates is not None:
        ranked &= candidates.to(scores.device, torch.bool)[None, :]
    ranked[:, PAD] = False
    if exclude is not None:
        rows = [r for r, items in enumerate(exclude) for _ in items]
        cols = [c for items in exclude for c in items]
        if rows:
            ranked[torch.as_tensor(rows), torch.as_tensor(cols)] = False
    ranked[batch, targets] = False                       # the target is compared with the others, not itself
    rank = 1 + ((scores > target_score) & ranked).sum(dim=1)
    if ties == "random":
        equal = ((scores == target_score) & ranked).sum(dim=1)
        u = torch.rand(len(rank), generator=generator).to(scores.device)
        rank = rank + torch.floor(u * (equal + 1).float()).long()
    elif ties != "optimistic":
        raise ValueError("ties is 'optimistic' or 'random'")
    return rank


# --- leave-one-out splits --------------------------------------------------------------------------------------------
@dataclass
class Split:
    """Evaluation cases of one split: predict ``targets[i]`` from ``histories[i]`` (token ids, oldest first)."""

    name: str
    users: list[str]
    histories: list[list[int]]
    targets: list[int]
    n_items: int
    dropped_users: int = 0          # users with fewer than min_interactions interactions
    unknown_targets: int = 0        # targets the vocabulary does not know (always ranked last)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Split":
        return Split(name or self.name, [self.users[i] for i in indices], [self.histories[i] for i in indices],
                     [self.targets[i] for i in indices], self.n_items, self.dropped_users, self.unknown_targets,
                     dict(self.meta))

    def sample(self, n: int, seed: int = 0) -> "Split":
        """A fixed random subset of n cases (all of them if n <= 0 or n >= len)."""
        if n <= 0 or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return self.subset(idx, f"{self.name}[{n}]")


def build_vocab(sequences: Mapping[str, Sequence[str]]) -> ItemVocab:
    """All items of the data set, in numeric order when ids are integers (else first-seen order) — reproducible."""
    items = {i for seq in sequences.values() for i in seq}
    if all(i.isdigit() for i in items):
        ordered = sorted(items, key=int)
    else:
        seen: dict[str, None] = {}
        for seq in sequences.values():
            for i in seq:
                seen.setdefault(i)
        ordered = list(seen)
    return ItemVocab(ordered)


def train_sequences(sequences: Mapping[str, Sequence[str]], holdout: int = 2) -> dict[str, list[str]]:
    """What training may see: every user's items without the last ``holdout`` (validation + test) ones."""
    return {u: list(seq[:-holdout]) if holdout else list(seq) for u, seq in sequences.items()}


def leave_one_out(sequences: Mapping[str, Sequence[str]], vocab: ItemVocab, split: str = "test",
                  min_interactions: int = MIN_INTERACTIONS) -> Split:
    """The test (last item) or validation (second-to-last item) cases of every user with enough interactions.

    Histories keep only items the vocabulary knows (a model cannot read others); a target unknown to the vocabulary
    is kept as token -1 and ranked last.
    """
    if split not in ("test", "valid"):
        raise ValueError("split is 'test' or 'valid'")
    cut = 1 if split == "test" else 2
    users, hists, targets = [], [], []
    dropped = unknown = 0
    for user, seq in sequences.items():
        if len(seq) < min_interactions:
            dropped += 1
            continue
        target = seq[-cut]
        users.append(user)
        hists.append(vocab.encode(seq[:-cut]))
        if target in vocab:
            targets.append(vocab.id_to_token[target])
        else:
            targets.append(-1)
            unknown += 1
    return Split(split, users, hists, targets, len(vocab), dropped, unknown)


# --- the evaluation loop ---------------------------------------------------------------------------------------------
def evaluate(score_fn: ScoreFn, split: Split, k_list: Iterable[int] = (10, 50), batch_size: int = 512,
             keep_seen: bool = False, progress: bool = True, return_ranks: bool = False,
             candidates: torch.Tensor | None = None, ties: str = "optimistic", seed: int = 0) -> dict:
    """Rank every item for every case of ``split`` with ``score_fn`` and return the metrics.

    Cases are scored in batches of similar history length (less padding); ranks are returned in split order when
    ``return_ranks``. The result has the metrics, ``users`` (cases evaluated) and the protocol settings.
    ``candidates`` / ``ties``: see ``ranks_from_scores`` (defaults: every item, optimistic ties).
    """
    return evaluate_many({"": score_fn}, split, k_list, batch_size, keep_seen, progress, return_ranks, candidates,
                         ties, seed)[""]


def evaluate_many(score_fns: Mapping[str, ScoreFn], split: Split, k_list: Iterable[int] = (10, 50),
                  batch_size: int = 512, keep_seen: bool = False, progress: bool = True, return_ranks: bool = False,
                  candidates: torch.Tensor | None = None, ties: str = "optimistic", seed: int = 0) -> dict[str, dict]:
    """``evaluate`` for several score functions in one pass: each batch of histories goes to every function in turn
    (the same list object), so functions that share work (``last_batch``-wrapped parts, e.g. the blend weights of
    ``blend_score_fn``) compute it once. Returns {name: metrics}."""
    from tqdm.auto import tqdm

    k_list = tuple(k_list)
    n = len(split)
    ranks = {name: torch.full((n,), split.n_items + 1, dtype=torch.long) for name in score_fns}   # unknown: last
    generators = {name: torch.Generator().manual_seed(seed) for name in score_fns}
    order = sorted(range(n), key=lambda i: len(split.histories[i]))
    bar = tqdm(total=n, desc=f"eval {split.name}", unit="user", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        known = [i for i in idx if split.targets[i] > 0]
        if known:
            hists = [split.histories[i] for i in known]
            targets = torch.as_tensor([split.targets[i] for i in known])
            for name, score_fn in score_fns.items():
                scores = score_fn(hists)
                if scores.shape != (len(known), split.n_items + 1):
                    raise ValueError(f"score_fn returned {tuple(scores.shape)}, "
                                     f"expected {(len(known), split.n_items + 1)}")
                ranks[name][torch.as_tensor(known)] = ranks_from_scores(
                    scores.cpu(), targets, None if keep_seen else hists, candidates, ties, generators[name])
        bar.update(len(idx))
    bar.close()
    results = {}
    for name, r in ranks.items():
        out: dict = metrics_from_ranks(r, k_list)
        out.update(users=n, split=split.name, keep_seen=keep_seen, dropped_users=split.dropped_users,
                   unknown_targets=split.unknown_targets, n_items=split.n_items)
        out.update(repeat_report(r, split, k_list))
        if candidates is not None:
            out["candidates"] = int(candidates.sum())
        if ties != "optimistic":
            out["ties"] = ties
        if return_ranks:
            out["ranks"] = r.tolist()
        results[name] = out
    return results


def repeat_targets(split: Split) -> torch.Tensor:
    """[len(split)] bool: the target is an item already in the user's history (repeat consumption)."""
    return torch.as_tensor([t > 0 and t in set(h) for t, h in zip(split.targets, split.histories)], dtype=torch.bool)


def repeat_report(ranks: torch.Tensor, split: Split, k_list: Iterable[int]) -> dict:
    """When some targets repeat a history item, the numbers under both conventions and the two kinds of case.

    * ``target_always_ranked`` (this project's headline numbers, as above): the target is ranked even when the user
      had it before; the other seen items are removed.
    * ``seen_target_excluded`` (the published baselines' code, e.g. SASRec/S3-Rec/ICLRec/BSARec: every history item
      is masked, the target too): a repeated target can never be found, so those cases count as misses.
    * ``by_target``: metrics over the repeat-target cases and over the new-target cases separately.
    Empty when no target repeats (the Amazon 5-core files): then both conventions give the same numbers.
    """
    repeat = repeat_targets(split)
    n_repeat = int(repeat.sum())
    if not n_repeat:
        return {"repeat_targets": 0}
    excluded = ranks.clone()
    excluded[repeat] = 2 ** 62          # not in the ranking at all: a miss at every k, MRR contribution 0
    return {
        "repeat_targets": n_repeat,
        "repeat_share": n_repeat / len(split),
        "conventions": {"target_always_ranked": metrics_from_ranks(ranks, k_list),
                        "seen_target_excluded": metrics_from_ranks(excluded, k_list)},
        "by_target": {"repeat": metrics_from_ranks(ranks[repeat], k_list),
                      "new": metrics_from_ranks(ranks[~repeat], k_list)},
    }


# --- score functions -------------------------------------------------------------------------------------------------
def lm_score_fn(model, max_len: int | None = None, device: str | torch.device = "cpu") -> ScoreFn:
    """Scores of an ``ItemLM`` (eval mode, no grad): next-item logits after each history's last item."""
    max_len = max_len or getattr(model.config, "max_position_embeddings", 50)

    @torch.no_grad()
    def score(histories: list[list[int]]) -> torch.Tensor:
        was_training = model.training
        model.eval()
        ids, mask = left_pad(histories, max_len)
        out = model(ids.to(device), mask.to(device)).float().cpu()
        if was_training:
            model.train()
        return out

    return score


def popularity_counts(sequences: Iterable[Sequence[str]], vocab: ItemVocab) -> torch.Tensor:
    """[n_items + 1] interaction counts (column 0 = 0)."""
    counts = torch.zeros(len(vocab) + 1, dtype=torch.float32)
    c = Counter(i for seq in sequences for i in seq)
    for item, n in c.items():
        tok = vocab.id_to_token.get(item)
        if tok is not None:
            counts[tok] = n
    return counts


def popularity_score_fn(train_seqs: Mapping[str, Sequence[str]], vocab: ItemVocab) -> ScoreFn:
    """The most-popular baseline: every user gets the same scores, the item's count in the training part."""
    counts = popularity_counts(train_seqs.values(), vocab)

    def score(histories: list[list[int]]) -> torch.Tensor:
        return counts.expand(len(histories), -1)

    return score


def cooc_score_fn(scorer, vocab: ItemVocab) -> ScoreFn:
    """A dense score vector from ``scoring.CooccurrenceScorer``.

    The scorer only returns its top k. We ask it for exactly as many items as it has candidates (the co-occurrence
    neighbours of the recent history), so every neighbour gets the scorer's own score; every other item gets the
    score the scorer's own top-up gives it (its popularity term), and items it has never seen get 0.
    """
    from streamrec.scoring import ScoreRequest

    norm = math.log1p(scorer._max_pop) or 1.0
    base = torch.zeros(len(vocab) + 1, dtype=torch.float32)
    for item, n in scorer.pop.items():
        tok = vocab.id_to_token.get(item)
        if tok is not None:
            base[tok] = scorer.popularity_weight * math.log1p(n) / norm
    base[PAD] = float("-inf")

    def score(histories: list[list[int]]) -> torch.Tensor:
        out = base.repeat(len(histories), 1)
        for row, hist in enumerate(histories):
            items = tuple(vocab.items[t] for t in hist)
            recent = items[-scorer.window:]
            candidates = set()
            for h in recent:
                candidates.update(scorer.cooc.get(h, ()))
            if not candidates:
                continue
            for item, s in scorer.score_one(ScoreRequest("eval", items, k=len(candidates))):
                tok = vocab.id_to_token.get(item)
                if tok is not None:
                    out[row, tok] = s
        return out

    return score


def text_similarity_score_fn(item_text: torch.Tensor, window: int = 5) -> ScoreFn:
    """No-training content baseline: cosine between each item's text embedding and the mean text embedding of the
    last ``window`` history items (``item_text``: [n_items + 1, d], zero rows = no text)."""
    item_text = torch.nn.functional.normalize(item_text.float(), dim=-1)

    def score(histories: list[list[int]]) -> torch.Tensor:
        q = torch.stack([item_text[h[-window:]].mean(0) if h else torch.zeros(item_text.shape[1])
                         for h in histories])
        return q @ item_text.T

    return score


# --- cold start ------------------------------------------------------------------------------------------------------
def cold_start_split(sequences: Mapping[str, Sequence[str]], vocab: ItemVocab, cold: Iterable[str],
                     min_interactions: int = MIN_INTERACTIONS) -> Split:
    """Test cases whose target (the user's last item) is a cold item; histories = every earlier item."""
    cold = set(cold)
    keep = {u: s for u, s in sequences.items() if len(s) >= min_interactions and s[-1] in cold}
    split = leave_one_out(keep, vocab, "test", min_interactions)
    split.name = "test-cold"
    return split


def cold_start_report(model, vocab: ItemVocab, sequences: Mapping[str, Sequence[str]], cold: Sequence[str],
                      k_list: Iterable[int] = (10, 20, 50), max_len: int = 50, progress: bool = True,
                      seed: int = 0, extra: Mapping[str, Callable[[ScoreFn], ScoreFn]] | None = None) -> dict:
    """How a model that has grown by cold items (``ItemLM.add_items`` + ``set_item_text``) ranks them.

    Cases: users whose last item is cold. Two rankings, seen items excluded, ties broken at random (an id-only model
    gives every cold item the same score 0, so optimistic ties would flatter it):
      * ``all_items``: among every item, warm and cold (what serving does);
      * ``cold_only``: among the cold items only (does the model know *which* new item?).
    Baselines on the same cases: a text-similarity scorer (no training) when the model has item text, and the
    expected value of a random order. ``extra``: {name: f}, each also evaluated as ``f(model's score function)``
    (the served blend of ``model/blend.py``).
    """
    cold_tokens = torch.zeros(len(vocab) + 1, dtype=torch.bool)
    cold_tokens[[vocab.id_to_token[i] for i in cold if i in vocab]] = True
    split = cold_start_split(sequences, vocab, cold)
    report: dict = {"cases": len(split), "cold_items": int(cold_tokens.sum()), "n_items": len(vocab),
                    "text_aware": bool(model.config.text_dim)}
    fn = lm_score_fn(model, max_len)
    for name, cand in (("all_items", None), ("cold_only", cold_tokens)):
        report[name] = {"model": evaluate(fn, split, k_list, candidates=cand, ties="random", seed=seed,
                                          progress=progress)}
        for label, wrap in (extra or {}).items():
            report[name][label] = evaluate(wrap(fn), split, k_list, candidates=cand, ties="random", seed=seed,
                                           progress=progress)
        if model.config.text_dim:
            report[name]["text_similarity"] = evaluate(text_similarity_score_fn(model.item_text), split, k_list,
                                                       candidates=cand, ties="random", seed=seed, progress=progress)
        zeros = lambda h: torch.zeros(len(h), len(vocab) + 1)          # noqa: E731  every item ties: random order
        report[name]["random"] = evaluate(zeros, split, k_list, candidates=cand, ties="random", seed=seed,
                                          progress=progress)
    return report
