"""Empty-history requests of the LM scorer with many counted items: the popularity step, before and after issue 14.

    python bench/popularity_bench.py --items 300000 --requests 64

Builds a tiny random ItemLM (the model is not what is measured: empty histories never reach it), counts
``--items`` distinct items through ``LMScorer.observe``, and times one ``score`` call of ``--requests`` empty-history
requests, each excluding 50 items (an ordinary ``unavailable`` set). "before" runs the same requests through the
code this replaced, kept here verbatim: ``sum(popularity.values())`` and ``most_common(k + |exclude|)`` over a
``Counter`` under the lock, per request. Also reported: the longest time ``observe`` waited for the lock while the
requests ran in another thread (what the event loop feels).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter

import torch

from streamrec.model.itemlm import ItemLM, ItemLMConfig, ItemVocab
from streamrec.scoring import ScoreRequest, Scored
from streamrec.serve.lm import LMScorer, r_k


def legacy_prior_answer(scorer: LMScorer, counts: Counter, r: ScoreRequest) -> Scored:
    """serve/lm.py's _prior_answer before issue 14 (popularity branch)."""
    k = r_k(r)
    with scorer._pop_lock:
        total = sum(counts.values())
        ranked = counts.most_common(k + len(r.exclude)) if total else []
    items = [(i, n / total) for i, n in ranked if i not in r.exclude]
    return Scored(items[:k], scorer.name, scorer.version, fallback=True, fallback_reason="empty-history: popularity")


def observer_wait(scorer: LMScorer, stop: threading.Event, waits: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        with scorer._pop_lock:
            pass
        waits.append(time.perf_counter() - t)
        time.sleep(0.0005)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    d = tempfile.mkdtemp()
    ItemLM(ItemLMConfig(n_items=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=32, max_position_embeddings=8)).save_pretrained(d)
    ItemVocab(str(i) for i in range(50)).save(d)
    scorer = LMScorer(d, "torch", threads=1)
    counts: Counter = Counter()
    for n in range(args.items):
        c = 1 + (args.items // (n + 1)) % 1000   # a long tail
        scorer.popularity.add(f"i{n}", c)
        counts[f"i{n}"] = c
    reqs = [ScoreRequest(f"u{u}", (), 10, frozenset(f"i{j}" for j in range(u, u + 50))) for u in range(args.requests)]

    def timed(fn):
        best, worst_wait = float("inf"), 0.0
        for _ in range(args.repeat):
            stop, waits = threading.Event(), []
            t = threading.Thread(target=observer_wait, args=(scorer, stop, waits))
            t.start()
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
            stop.set()
            t.join()
            worst_wait = max(worst_wait, max(waits, default=0.0))
        return best, worst_wait, out

    before, before_wait, a = timed(lambda: [legacy_prior_answer(scorer, counts, r) for r in reqs])
    after, after_wait, b = timed(lambda: scorer.score(reqs))
    assert [x.items for x in a] == [x.items for x in b], "the two paths disagree"
    print(f"{args.requests} empty-history requests, {args.items:,} counted items")
    print(f"  before (sum + most_common per request): {before * 1000:9.1f} ms   longest observe() wait "
          f"{before_wait * 1000:7.1f} ms")
    print(f"  after  (maintained total and top-N):    {after * 1000:9.1f} ms   longest observe() wait "
          f"{after_wait * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
