"""Issue-12 quality table: test HR@10 / NDCG@10 of `streamrec train` runs, per seed and as mean +- spread.

    python bench/seed_table.py artifacts/q/beauty-s* artifacts/q/toys-s* artifacts/q/sports-s* \
        --plot docs/img/quality-seeds.png

Each run directory's ``metrics.json`` gives the served ranking (``test``: the LM with its validated blend) and the
LM alone (``test_lm_only``). Runs trained before the blend existed have only the LM in ``metrics.json``; for them
``eval-blend.json`` (written by ``streamrec eval DATA --model RUN --blend choose --json RUN/eval-blend.json``)
gives the served ranking. Spread = sample standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

TARGETS = {"Beauty": 0.065, "Toys_and_Games": 0.064, "Sports_and_Outdoors": 0.034}   # issue 12, NDCG@10
ANCHORS = {"Beauty": ("BSARec", 0.0611), "Toys_and_Games": ("SASRec, tuned loss", 0.0580),
           "Sports_and_Outdoors": ("SASRec, tuned loss", 0.0314)}


def read_run(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "train_config.json").read_text())
    if "test_lm_only" in m:
        served, lm, blend = m["test"], m["test_lm_only"], m.get("blend", {})
    else:
        e = json.loads((run / "eval-blend.json").read_text())
        served, lm, blend = e, m["test"], e.get("blend", {})
    return {"dataset": m["dataset"], "seed": cfg["seed"], "served": served, "lm": lm, "blend": blend,
            "minutes": m["train_seconds"] / 60, "epochs": m["epochs_run"], "best_epoch": m["best_epoch"],
            "stop": m["stop_reason"], "text": cfg.get("use_text", False)}


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--plot", help="bar chart of NDCG@10 per data set (PNG)")
    args = p.parse_args()
    by_set: dict[str, list[dict]] = defaultdict(list)
    for run in args.runs:
        if (run / "metrics.json").is_file():
            by_set[read_run(run)["dataset"]].append(read_run(run))
    print("| data set | seed | served HR@10 | served NDCG@10 | LM alone NDCG@10 | blend (cooc, text) | epochs (best) | "
          "stop | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in by_set.items():
        for r in sorted(runs, key=lambda r: r["seed"]):
            b = r["blend"]
            print(f"| {name} | {r['seed']} | {r['served']['HR@10']:.4f} | {r['served']['NDCG@10']:.4f} | "
                  f"{r['lm']['NDCG@10']:.4f} | {b.get('cooc_weight', b.get('cooc', 0))}, "
                  f"{b.get('text_weight', b.get('text', 0))} | {r['epochs']} ({r['best_epoch']}) | {r['stop']} | "
                  f"{r['minutes']:.1f} |")
    print()
    print("| data set | seeds | served HR@10 | served NDCG@10 | LM alone NDCG@10 | target NDCG@10 | best anchor |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in by_set.items():
        a = ANCHORS.get(name, ("", 0))
        print(f"| {name} | {len(runs)} | {mean_sd([r['served']['HR@10'] for r in runs])} | "
              f"{mean_sd([r['served']['NDCG@10'] for r in runs])} | {mean_sd([r['lm']['NDCG@10'] for r in runs])} | "
              f"{TARGETS.get(name, '')} | {a[0]} {a[1]} |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(by_set)
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(names))
        for off, key, label in ((-0.2, "lm", "ItemLM alone"), (0.2, "served", "served (LM + blend)")):
            vals = [[r[key]["NDCG@10"] for r in by_set[n]] for n in names]
            ax.bar([i + off for i in x], [statistics.mean(v) for v in vals], 0.4, label=label,
                   yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in vals], capsize=4)
        for i, n in enumerate(names):
            if n in TARGETS:
                ax.hlines(TARGETS[n], i - 0.45, i + 0.45, colors="red", linestyles="--",
                          label="issue target" if i == 0 else None)
                ax.hlines(ANCHORS[n][1], i - 0.45, i + 0.45, colors="black", linestyles=":",
                          label="best published anchor" if i == 0 else None)
        ax.set_xticks(list(x), [f"{n}\n({len(by_set[n])} seeds)" for n in names])
        ax.set_ylabel("test NDCG@10 (full ranking)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
