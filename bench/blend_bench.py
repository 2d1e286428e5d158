#!/usr/bin/env python
"""What the served blend costs: LMScorer.score with the model's blend.json vs the same model alone.

    python bench/blend_bench.py artifacts/q/beauty-s1 ../shared/data/amazon/Beauty.txt

Real histories (each user's items but the last, seen items excluded, k=10) from the data file, the worker's
backend (default onnx-int8, one thread) and its fallback (cooc.json of the run). Both scorers are timed in
alternating rounds in one run, so the ratio compares like with like on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.model.datasets import read_sequences  # noqa: E402
from streamrec.scoring import CooccurrenceScorer, ScoreRequest  # noqa: E402
from streamrec.serve.lm import LMScorer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="streamrec train --out directory (model/, blend.json, cooc.json)")
    p.add_argument("data", help="the interaction file: request histories come from it")
    p.add_argument("--backend", default="onnx-int8")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    run = Path(args.run)
    seqs = list(read_sequences(args.data, "auto").values())
    random.Random(0).shuffle(seqs)
    cooc = CooccurrenceScorer.load(run / "cooc.json")
    blended = LMScorer(run, args.backend, threads=1, fallback=cooc)
    alone = LMScorer(run, args.backend, threads=1, fallback=cooc, cooc_weight=0.0, text_weight=0.0)
    print(f"{run}: blend {blended.blend.info()}, backend {args.backend}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| batch | LM alone ms/batch | served (blend) ms/batch | ratio |")
    print("|---|---|---|---|")
    for b in map(int, args.batch_sizes.split(",")):
        batches = [[ScoreRequest(f"u{i}", tuple(s[:-1]), 10, frozenset(s[:-1])) for i, s in
                    enumerate(seqs[j * b:(j + 1) * b])] for j in range(args.rounds)]
        times = {"alone": [], "served": []}
        for reqs in batches:
            for name, scorer in (("alone", alone), ("served", blended)):
                t = time.perf_counter()
                scorer.score(reqs)
                times[name].append((time.perf_counter() - t) * 1000)
        a, s = statistics.median(times["alone"]), statistics.median(times["served"])
        print(f"| {b} | {a:.2f} | {s:.2f} | {s / a:.2f}x |")


if __name__ == "__main__":
    main()
