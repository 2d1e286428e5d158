#!/usr/bin/env python
"""Pipeline throughput vs the raw Kafka client ceiling, side by side on one broker in one run.

    deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait
    python bench/pipeline_bench.py --bootstrap 127.0.0.1:9092 --events 50000

1. N synthetic interaction events (users walking item clusters) are produced once to a fresh ``interactions``
   topic (4 partitions, keyed by user).
2. **bare**: an aiokafka consume -> produce loop (its own consumer group, ``getmany`` batches, every record sent
   on unchanged to an output topic, offsets committed per batch): the ceiling for this broker and machine.
3. **pipeline**: a real ``streamrec worker`` subprocess (validation, RocksDB table + changelog, co-occurrence
   scoring, one recommendation per event) on the same topic.

Both rates come from the same measurement: the broker-side timestamps of the first and last message each wrote to
its output topic, so start-up and group joins are not counted in either. ``--profile`` runs the worker under
cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamrec.stream import topics                      # noqa: E402
from streamrec.config import Settings            # noqa: E402
from streamrec.model.datasets import synthetic         # noqa: E402
from streamrec.events import Interaction         # noqa: E402


def make_events(n: int, users: int, seed: int) -> list[Interaction]:
    length = max(1, n // users)
    seqs = synthetic(n_users=users, n_items=500, length=length, seed=seed)
    evs = [Interaction(f"{u}-{i}", u, item, "view", 1_700_000_000 + i * 60 + k * 1e-3)
           for k, (u, seq) in enumerate(seqs.items()) for i, item in enumerate(seq)]
    evs.sort(key=lambda e: e.timestamp)
    return evs[:n]


def produce(bootstrap: str, topic: str, events: list[Interaction]) -> float:
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024)
    t = time.perf_counter()
    for e in events:
        p.send(topic, key=e.user_id.encode(), value=e.to_bytes())
    p.flush()
    p.close()
    return len(events) / (time.perf_counter() - t)


def output_rate(bootstrap: str, topic: str, n: int, timeout: float, scorers: Counter | None = None
                ) -> tuple[int, float]:
    """Wait for ``n`` messages on ``topic``; (count, messages/s between the first and last message timestamp).
    ``scorers`` counts the recommendations by scorer name (``name`` or ``name FALLBACK``)."""
    from kafka import KafkaConsumer
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=1000, fetch_max_bytes=64 * 1024 * 1024)
    first, last, count = None, None, 0
    deadline = time.monotonic() + timeout
    try:
        while count < n and time.monotonic() < deadline:
            for r in c:
                first = r.timestamp if first is None else min(first, r.timestamp)
                last = r.timestamp if last is None else max(last, r.timestamp)
                count += 1
                if scorers is not None:
                    s = json.loads(r.value)["scorer"]
                    scorers[s["name"] + (" FALLBACK" if s["fallback"] else "")] += 1
    finally:
        c.close()
    span = max((last or 0) - (first or 0), 1) / 1000.0
    return count, (count - 1) / span if count > 1 else 0.0


async def bare_loop(bootstrap: str, source: str, sink: str, n: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while done < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for records in batches.values():
                for r in records:
                    await producer.send(sink, key=r.key, value=r.value)   # enqueues; delivery is batched
                done += len(records)
            if batches:
                await consumer.commit()
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(env: dict, profile: Path | None, cwd: Path = ROOT) -> subprocess.Popen:
    """A ``streamrec worker`` subprocess, once ready; ``cwd``: the checkout whose streamrec it runs."""
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "streamrec", "worker"]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{env['STREAMREC_WEB_PORT']}/ready"
    for _ in range(480):
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.25)
    raise SystemExit("worker not ready")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("STREAMREC_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--profile", action="store_true", help="run the worker under cProfile and print the top entries")
    ap.add_argument("--worker-env", action="append", default=[], metavar="STREAMREC_X=V",
                    help="extra worker settings, e.g. STREAMREC_TAKE_BATCH=512")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    name = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    env.update(STREAMREC_KAFKA_BOOTSTRAP=args.bootstrap, STREAMREC_TOPIC_PREFIX=f"bench-{name}-",
               STREAMREC_APP_ID=f"bench-{name}", STREAMREC_DATA_DIR=str(tmp / "state"),
               STREAMREC_WEB_PORT=str(free_port()), STREAMREC_LOG_LEVEL="warn", STREAMREC_SESSION_TIMEOUT_S="6")
    env.update(dict(kv.split("=", 1) for kv in args.worker_env))
    settings = Settings.from_env(env)
    topics.apply(settings)
    source = settings.topic("interactions")
    bare_sink = settings.topic("bare-out")
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
    admin.create_topics([NewTopic(bare_sink, 4, 1)])
    admin.close()

    events = make_events(args.events, args.users, args.seed)
    n = len(events)
    print(f"producing {n} events ({len({e.user_id for e in events})} users) to {source} ...", flush=True)
    produce_rate = produce(args.bootstrap, source, events)

    print("bare aiokafka consume -> produce ...", flush=True)
    t = time.perf_counter()
    asyncio.run(bare_loop(args.bootstrap, source, bare_sink, n))
    bare_wall = time.perf_counter() - t
    bare_count, bare_rate = output_rate(args.bootstrap, bare_sink, n, args.timeout)

    print("streamrec worker ...", flush=True)
    prof = tmp / "worker.prof" if args.profile else None
    proc = run_worker(env, prof)
    try:
        scorers: Counter = Counter()
        pipe_count, pipe_rate = output_rate(args.bootstrap, settings.topic("recommendations"), n, args.timeout,
                                            scorers)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)

    result = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.node()} {os.cpu_count()} cores",
        "events": n, "users": args.users, "producer_events_per_s": round(produce_rate),
        "bare_events_per_s": round(bare_rate), "bare_wall_s": round(bare_wall, 2), "bare_out": bare_count,
        "pipeline_events_per_s": round(pipe_rate), "pipeline_out": pipe_count,
        "ratio_pipeline_to_bare": round(pipe_rate / bare_rate, 3) if bare_rate else None,
        "worker_env": args.worker_env, "scorers": dict(scorers),
    }
    print()
    print(f"{'path':<34}{'events/s':>12}")
    print(f"{'kafka-python producer (input)':<34}{produce_rate:>12,.0f}")
    print(f"{'bare aiokafka consume->produce':<34}{bare_rate:>12,.0f}")
    print(f"{'streamrec pipeline':<34}{pipe_rate:>12,.0f}   scorer: {dict(scorers)}")
    print(f"ratio pipeline / bare: {result['ratio_pipeline_to_bare']}")
    if pipe_count < n or bare_count < n:
        print(f"WARNING: incomplete outputs: pipeline {pipe_count}/{n}, bare {bare_count}/{n}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if prof and prof.exists():
        import pstats
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(30)
    return 0 if pipe_count >= n and bare_count >= n else 1


if __name__ == "__main__":
    raise SystemExit(main())
