#!/usr/bin/env python
"""The worker's own per-event CPU, without Kafka or Faust: Pipeline.handle_batch on MovieLens events.

    python bench/pipeline_cpu_bench.py --baseline var/before      # this checkout and another, same run

The events of ``ratings.csv`` in timestamp order go through ``Pipeline.handle_batch`` in batches of
``--batch`` (the worker's ``take_batch``) with a dict for the table and a sink that only encodes; rounds alternate
between the checkouts (each in its own child process) so a change in machine load hits both alike. It measures
what streamrec adds per event on top of the framework (parse, state, scoring, messages), not end-to-end rates.
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
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-latest-small" / "ratings.csv"


def child(data: Path, n: int, batch: int, scorer: str) -> dict:
    from streamrec.config import Settings
    from streamrec.model.datasets import read_events
    from streamrec.scoring import CooccurrenceScorer
    from streamrec.stream.pipeline import Pipeline

    events = sorted(read_events(data), key=lambda e: e.timestamp)[:n]

    class Msg:
        __slots__ = ("key", "value", "topic", "partition", "offset", "timestamp")

        def __init__(self, key, value, offset):
            self.key, self.value, self.topic, self.partition, self.offset = key, value, "interactions", 0, offset
            self.timestamp = time.time()

    class Ev:
        __slots__ = ("message",)

        def __init__(self, m):
            self.message = m

    class Store(dict):
        def get(self, key, event=None):
            return dict.get(self, key)

        def put(self, key, value, event):
            self[key] = value

    class Sink:
        async def send(self, topic, key, value):
            pass

    if scorer == "none":
        from streamrec.scoring import NullScorer
        sc = NullScorer()
    else:
        sc = CooccurrenceScorer()
    p = Pipeline(Settings(), sc, Store(), Sink())
    evs = [Ev(Msg(e.user_id.encode(), e.to_bytes(), k)) for k, e in enumerate(events)]

    async def go() -> float:
        t = time.perf_counter()
        for i in range(0, len(evs), batch):
            await p.handle_batch(evs[i:i + batch])
        return time.perf_counter() - t

    secs = asyncio.run(go())
    return {"events": len(evs), "us_per_event": round(1e6 * secs / len(evs), 1), "events_per_s": round(len(evs) / secs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scorer", default="cooc", choices=["cooc", "none"])
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.data, args.events, args.batch, args.scorer)))
        return 0
    checkouts = ([("before", args.baseline.resolve())] if args.baseline else []) + [("after", ROOT)]
    results: dict[str, list[float]] = {name: [] for name, _ in checkouts}
    for r in range(args.rounds):
        for name, src in checkouts:
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--data", str(args.data),
                                  "--events", str(args.events), "--batch", str(args.batch), "--scorer", args.scorer],
                                 env=dict(os.environ, PYTHONPATH=str(src)), cwd=src, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(row["us_per_event"])
            print(f"round {r + 1} {name}: {row}", flush=True)
    print(f"\nload average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, us in results.items():
        print(f"{name}: median {sorted(us)[len(us) // 2]} us/event over {len(us)} rounds {us}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
