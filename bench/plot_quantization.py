#!/usr/bin/env python
"""Plot ranking quality per serving mode from `bench/scorer_bench.py --quality --json` outputs.

    python bench/plot_quantization.py artifacts/quality-beauty-*.json --out docs/img/quality-vs-quantization.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSON files written by scorer_bench.py --quality --json")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(args.results)
    variants: list[str] = []
    for n, path in enumerate(args.results):
        rows = json.loads(Path(path).read_text())["quality"]["rows"]
        variants = variants or [r["variant"] for r in rows]
        rel = {r["variant"]: 100 * r["relative"] for r in rows}
        xs = [i + (n - (len(args.results) - 1) / 2) * width for i in range(len(variants))]
        label = Path(path).stem.replace("quality-", "")
        fp32 = rows[0]["ndcg@10"]
        ax.bar(xs, [rel.get(v, float("nan")) for v in variants], width, label=f"{label} (fp32 NDCG@10 {fp32:.4f})")
    ax.axhspan(-1, 1, color="green", alpha=0.08, label="within 1% of fp32 (the rule)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([v.replace(" (", "\n(").replace(" + ", "\n+ ") for v in variants], fontsize=8)
    ax.set_ylabel("NDCG@10 change vs fp32 (%)")
    ax.set_ylim(-1.5, 1.5)
    ax.set_title("Serving modes vs fp32: next-item NDCG@10, Amazon Beauty test split (cuda-* = CPU emulation)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
