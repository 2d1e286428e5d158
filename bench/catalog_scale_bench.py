#!/usr/bin/env python
"""Per-request cost and memory of the co-occurrence path as the catalog grows (issue 14 items 5, 6, 8).

    python bench/catalog_scale_bench.py                               # this checkout
    python bench/catalog_scale_bench.py --baseline var/before         # and another checkout, same run

For each catalog size N (10k / 100k / 1M items), in a fresh child process per checkout and size:
  * ``request``  Pipeline.request for a user with 50 seen items while N/10 items are unavailable (deleted);
  * ``score``    one co-occurrence request whose history items have few neighbours, so the answer is topped up
                 with popular items (the path that sorted every count), with that exclusion set;
  * ``catalog``  one item record through Pipeline.handle_item into a catalog of N items (the gauge update);
  * ``memory``   resident memory the scorer holds after learning N events that each carry a new item id
                 (RSS growth of the child, MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(n: int) -> dict:
    import orjson

    from streamrec.config import Settings
    from streamrec.scoring import CooccurrenceScorer
    from streamrec.stream.pipeline import Pipeline

    class Sink:
        async def send(self, topic, key, value):
            pass

    class Msg:
        def __init__(self, key, value):
            self.key, self.value, self.topic, self.partition, self.offset, self.timestamp = key, value, "items", 0, 0, None

    class Ev:
        def __init__(self, key, value):
            self.message = Msg(key, value)

    out: dict = {"items": n}
    base = rss_mib()
    scorer = CooccurrenceScorer()
    t = time.perf_counter()
    prev: list[str] = []
    for i in range(n):   # every event a new item; its history the previous five
        item = f"i{i}"
        scorer.observe(prev, item)
        prev = (prev + [item])[-5:]
    for i in range(0, n, 7):   # a popularity spread
        scorer.observe([], f"i{i}")
    out["learn_s"] = round(time.perf_counter() - t, 1)
    out["memory_mib"] = round(rss_mib() - base, 1)
    out["known_items"] = len(scorer.pop)

    catalog = {f"i{i}": {"item_id": f"i{i}"} for i in range(n)}
    p = Pipeline(Settings(), scorer, None, Sink(), catalog)
    for i in range(0, n, 10):
        p.apply_item(f"i{i}", None)
    state = {"history": [[f"i{i}", 0.0, "view"] for i in range(n - 50, n)], "total": 50}
    reps = 50
    t = time.perf_counter()
    for _ in range(reps):
        req = p.request("u", state)
    out["request_ms"] = round(1000 * (time.perf_counter() - t) / reps, 3)
    t = time.perf_counter()
    for _ in range(reps):
        answer = scorer.score([req])[0]
    out["score_ms"] = round(1000 * (time.perf_counter() - t) / reps, 3)
    out["answer_items"] = len(answer.items)

    async def items() -> None:
        for k in range(20):
            await p.handle_item(Ev(f"new{k}".encode(), orjson.dumps({"schema_version": 1, "item_id": f"new{k}",
                                                                      "title": "t"})))

    class CostlyLen(dict):   # a RocksDB table's len() reads every key: charge a dict's iteration for it
        def __len__(self):
            return sum(1 for _ in self)

    p.catalog = CostlyLen(catalog)
    t = time.perf_counter()
    asyncio.run(items())
    out["item_msg_ms"] = round(1000 * (time.perf_counter() - t) / 20, 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return 0
    checkouts = ([("before", args.baseline.resolve())] if args.baseline else []) + [("after", ROOT)]
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for name, src in checkouts:
            env = dict(os.environ, PYTHONPATH=str(src))
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(n)], env=env, cwd=src,
                               capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["checkout"] = name
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nload average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| items | checkout | Pipeline.request ms | score ms (top-up path) | item message ms | scorer memory MiB "
          "(items kept) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['items']:,} | {r['checkout']} | {r['request_ms']} | {r['score_ms']} | {r['item_msg_ms']} | "
              f"{r['memory_mib']} ({r['known_items']:,}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
