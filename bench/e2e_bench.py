#!/usr/bin/env python
"""End to end on real data: the streamrec worker against its peers, same events, same broker, same run.

    deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait
    python bench/e2e_bench.py --bootstrap 127.0.0.1:9092            # ~6-10 min on a 2-core box

MovieLens ratings (``../shared/data/ml-latest-small/ratings.csv``, in timestamp order) become interaction events.

1. **Max sustained throughput (backlog drain).** The first ``--events`` events are produced once to a fresh
   ``interactions`` topic (4 partitions, keyed by user); then each contender in turn reads all of them from the
   start (its own consumer group) and writes one message per event to its output topic:
     * ``bare``        aiokafka consume -> produce, bytes forwarded unchanged (the client's ceiling);
     * ``faust-min``   a textbook Faust app: one ``async for`` step, one table write, one send per event;
     * ``quix``        a quixstreams app doing the same state work (RocksDB + changelog, no scoring): the peer;
     * ``worker-none`` the streamrec worker with ``STREAMREC_SCORER=none`` (everything but the scorer);
     * ``before-cooc`` with ``--baseline DIR``: another checkout's worker (e.g. main before a change), on its own
                   copy of the same events (its own topic prefix; it may lack ``scorer=none``);
     * ``worker-cooc`` the streamrec worker with the co-occurrence scorer; ``worker-lm`` with the item LM (ONNX int8);
     * ``worker2-cooc`` the same as two processes (``--processes 2``), not run unless asked for.
   Each rate comes from the broker timestamps of the first and last message the contender wrote (start-up and
   group joins excluded), so every rate is comparable with every other; the table prints the ratios.
2. **Open-loop latency.** Each worker with a scorer (``before-cooc``, ``worker-cooc``), warm from its drain, gets events at fixed offered loads
   (``--loads``, ``--duration`` s each, the producer paced against the clock whether or not the worker keeps up)
   and the time from each event's send to its recommendation being read back is recorded (p50/p95/p99/max, the
   output rate, and the events still unanswered when the load window ended = the lag). Before the next load the
   backlog is drained (at most ``--settle`` s; what stays unanswered is reported, not hidden).

quixstreams lives in its own venv (``bench/.venv-peers``, created here on first use), never in the project's.
Results: printed tables, ``results.json`` and two PNG plots in ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from pipeline_bench import bare_loop, free_port, produce, run_worker   # noqa: E402
from streamrec.config import Settings                                    # noqa: E402
from streamrec.events import Interaction                                 # noqa: E402
from streamrec.model.datasets import read_events                         # noqa: E402
from streamrec.stream import topics                                      # noqa: E402

PEERS_VENV = BENCH / ".venv-peers"
PEERS_PACKAGES = ["quixstreams==3.28.1", "py-spy==0.4.3"]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-latest-small" / "ratings.csv"
CONTENDERS = ("bare", "faust-min", "quix", "worker-none", "before-cooc", "worker-cooc", "worker-lm", "worker2-cooc")
# kept running after their drain for the open-loop loads
LATENCY = ("before-cooc", "worker-cooc", "worker-lm")


# --- environment ------------------------------------------------------------------------------------------------

def peers_python() -> Path:
    """The benchmark venv's python (quixstreams, py-spy), created on first use: never a project dependency."""
    py = PEERS_VENV / "bin" / "python"
    if py.exists():
        return py
    uv = Path.home() / ".cache" / "streamrec" / "uv-tool" / "bin" / "uv"   # scripts/bootstrap.sh's uv, if any
    print(f"creating {PEERS_VENV} with {', '.join(PEERS_PACKAGES)} ...", flush=True)
    if uv.exists():
        subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(PEERS_VENV)], check=True)
        subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(py), *PEERS_PACKAGES], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PEERS_PACKAGES], check=True)
    return py


def load_events(path: Path) -> list[Interaction]:
    events = read_events(path)
    events.sort(key=lambda e: e.timestamp)   # stable: a user's same-second ratings keep their file order
    return events


def renamed(events: list[Interaction], start: int, n: int) -> list[Interaction]:
    """``n`` events from ``start`` on, wrapping around the data set with fresh event ids (never a duplicate)."""
    out = []
    for k in range(start, start + n):
        e = events[k % len(events)]
        lap = k // len(events)
        out.append(e if lap == 0 else Interaction(f"{e.event_id}-lap{lap}", e.user_id, e.item_id, e.event_type,
                                                  e.timestamp, e.value))
    return out


# --- Kafka helpers ----------------------------------------------------------------------------------------------

def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    """Output topics of the peers. LogAppendTime: the broker stamps each message when it is written, whatever
    timestamp the client sent (quixstreams, for one, forwards the input record's timestamp, which would time the
    input producer instead of the peer)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, partitions, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})
                             for n in names])
    finally:
        admin.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
        return {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


def drain_rate(bootstrap: str, topic: str, start: dict[int, int] | None, n: int, timeout: float,
               proc: subprocess.Popen | None = None) -> tuple[int, float]:
    """Read ``n`` messages of ``topic`` written after ``start`` (offsets); (count, messages/s between the broker
    timestamps of the first and last of them)."""
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024)
    tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or [])]
    c.assign(tps)
    for tp in tps:
        c.seek(tp, (start or {}).get(tp.partition, 0))
    first = last = None
    count = 0
    deadline = time.monotonic() + timeout
    try:
        while count < n and time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"contender exited with {proc.returncode} after {count} messages")
            for records in c.poll(timeout_ms=500, max_records=10_000).values():
                for r in records:
                    first = r.timestamp if first is None else min(first, r.timestamp)
                    last = r.timestamp if last is None else max(last, r.timestamp)
                    count += 1
    finally:
        c.close()
    span = max((last or 0) - (first or 0), 1) / 1000.0
    return count, (count - 1) / span if count > 1 else 0.0


# --- contenders -------------------------------------------------------------------------------------------------

class Proc:
    """A contender running as a subprocess, its output to a log file."""

    def __init__(self, cmd: list[str] | None, env: dict, cwd: Path, log: Path, proc=None):
        self.log = log
        self.proc = proc or subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def worker_env(base: dict, bootstrap: str, prefix: str, app_id: str, data_dir: Path, scorer: str) -> dict:
    env = dict(base)
    env.update(STREAMREC_KAFKA_BOOTSTRAP=bootstrap, STREAMREC_TOPIC_PREFIX=prefix, STREAMREC_APP_ID=app_id,
               STREAMREC_DATA_DIR=str(data_dir), STREAMREC_WEB_PORT=str(free_port()), STREAMREC_LOG_LEVEL="warn",
               STREAMREC_SESSION_TIMEOUT_S="6", STREAMREC_SCORER=scorer)
    return env


# --- open-loop latency ------------------------------------------------------------------------------------------

def open_loop(bootstrap: str, source: str, answers: str, events: list[Interaction], rate: float,
              settle: float) -> dict:
    """Send ``events`` at ``rate``/s (paced against the clock) and time each one's answer on ``answers``."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    start_offsets = end_offsets(bootstrap, answers)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    stop = threading.Event()

    def consume() -> None:
        c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5,
                          fetch_max_bytes=64 * 1024 * 1024)
        tps = [TopicPartition(answers, p) for p in start_offsets]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, start_offsets[tp.partition])
        try:
            while not stop.is_set():
                for records in c.poll(timeout_ms=20, max_records=5000).values():
                    now = time.time()
                    for r in records:
                        eid = orjson.loads(r.value).get("trigger_event_id")
                        if eid is not None and eid not in got:
                            got[eid] = now
        finally:
            c.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    time.sleep(1.0)   # the reader is positioned before the first send
    p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1, batch_size=256 * 1024)
    t0 = time.perf_counter()
    wall0 = time.time()
    for k, e in enumerate(events):
        delay = t0 + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[e.event_id] = time.time()
        p.send(source, key=e.user_id.encode(), value=e.to_bytes())
    p.flush()
    window = time.perf_counter() - t0
    wall_end = time.time()
    answered_in_window = sum(1 for t in list(got.values()) if t <= wall_end)
    lag_at_end = len(events) - answered_in_window
    deadline = time.monotonic() + settle
    while len(got) < len(events) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    reader.join(5)
    p.close()
    lat = sorted(got[i] - t for i, t in sent.items() if i in got)
    unanswered = len(events) - len(lat)

    def pct(q: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

    return {"offered_per_s": rate, "events": len(events), "send_window_s": round(window, 2),
            "achieved_send_per_s": round(len(events) / window),
            "output_per_s_in_window": round(answered_in_window / max(wall_end - wall0, 1e-9)),
            "lag_at_end": lag_at_end, "unanswered_after_settle": unanswered,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "max_ms": round(1000 * lat[-1], 1) if lat else None}


# --- report -----------------------------------------------------------------------------------------------------

def latency_phase(args, all_events: list[Interaction], n: int, source: str, recs: str) -> list[dict]:
    rows = []
    start_at = n
    for load in [float(x) for x in args.loads.split(",")]:
        evs = renamed(all_events, start_at, int(load * args.duration))
        start_at += len(evs)
        print(f"   [latency] {load:,.0f} events/s for {args.duration:.0f} s ...", flush=True)
        r = open_loop(args.bootstrap, source, recs, evs, load, args.settle)
        r["load_avg"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        rows.append(r)
        print(f"      p50 {r['p50_ms']} p95 {r['p95_ms']} p99 {r['p99_ms']} max {r['max_ms']} ms; "
              f"out {r['output_per_s_in_window']:,}/s; lag at end {r['lag_at_end']:,}; "
              f"unanswered {r['unanswered_after_settle']:,}", flush=True)
    return rows


def plots(result: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = result["throughput"]
    names = [n for n in CONTENDERS if n in rates]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    vals = [rates[n]["events_per_s"] for n in names]
    ax.bar(names, vals, color=["#999", "#c96", "#69c", "#9c6", "#bbb", "#396", "#264"][:len(names)])
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log)")
    ax.set_title(f"max sustained throughput, {result['events']:,} MovieLens events, load {result['load_before']}")
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    lats = result.get("latency") or {}
    if lats:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for who, ls in zip(lats, ("-", "--")):
            lat = lats[who]
            loads = [r["offered_per_s"] for r in lat]
            for key, marker in (("p50_ms", "o"), ("p99_ms", "^"), ("max_ms", "x")):
                ax.plot(loads, [r[key] or float("nan") for r in lat], marker + ls,
                        label=f"{who} {key.replace('_ms', '')}")
        ax.axhline(100, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(loads, [f"{x:,.0f}" for x in loads])
        ax.minorticks_off()
        ax.set_xlabel("offered load, events/s")
        ax.set_ylabel("event -> recommendation read, ms")
        ax.set_title(f"open loop, {result['duration_s']:.0f} s per load, load {result['load_before']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("STREAMREC_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--events", type=int, default=30_000, help="events each contender drains")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help="default: all but worker2-cooc and worker-lm (the item LM scorer, ONNX int8 on CPU: needs "
                         "--worker-env STREAMREC_MODEL_DIR=...)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="drain rounds: the contenders take turns R times (load on a shared box drifts within "
                         "minutes; turns spread it over all of them); rates are the medians")
    ap.add_argument("--loads", default="500,1000,2000,4000", help="offered loads of the latency phase, events/s")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per offered load")
    ap.add_argument("--settle", type=float, default=60.0, help="longest wait for a load's backlog to drain")
    ap.add_argument("--timeout", type=float, default=600.0, help="longest drain of one contender")
    ap.add_argument("--worker-env", action="append", default=[], metavar="STREAMREC_X=V",
                    help="extra settings for both streamrec workers")
    ap.add_argument("--profile", type=int, default=0.0, metavar="S",
                    help="py-spy the worker-cooc drain for S seconds (raw folded stacks to --out)")
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="another checkout of streamrec (e.g. `git archive f867b67 | tar -x -C DIR`): its worker runs "
                         "as before-cooc, on its own copy of the same events")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default var/bench/e2e-<time>)")
    args = ap.parse_args()

    contenders = [c for c in args.contenders.split(",") if c and (c != "before-cooc" or args.baseline)]
    if args.contenders == ",".join(CONTENDERS):
        contenders.remove("worker2-cooc")
        contenders.remove("worker-lm")
    if "worker-lm" in contenders and not any(kv.startswith("STREAMREC_MODEL_DIR=") for kv in args.worker_env):
        raise SystemExit("worker-lm needs --worker-env STREAMREC_MODEL_DIR=<a streamrec train output>")
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contenders {sorted(unknown)}; choose from {CONTENDERS}")
    out = args.out or ROOT / "var" / "bench" / f"e2e-{datetime.datetime.now():%Y%m%dT%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-e2e-"))
    py_peers = peers_python() if "quix" in contenders or args.profile else None

    all_events = load_events(args.data)
    drain_events = all_events[:args.events]
    name = uuid.uuid4().hex[:8]
    prefix = f"e2e-{name}-"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    base_env.update(dict(kv.split("=", 1) for kv in args.worker_env))
    settings = Settings.from_env(worker_env(base_env, args.bootstrap, prefix, f"e2e-{name}-cooc", tmp, "cooc"))
    topics.apply(settings)
    source = settings.topic("interactions")
    create_topics(args.bootstrap, [prefix + "bare-out", prefix + "faust-out", prefix + "quix-out"])
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load_before}; producing {len(drain_events):,} events "
          f"({len({e.user_id for e in drain_events})} users, {len({e.item_id for e in drain_events}):,} items) "
          f"to {source} ...", flush=True)
    produce(args.bootstrap, source, drain_events)
    n = len(drain_events)

    result: dict = {"date": datetime.datetime.now().isoformat(timespec="minutes"),
                    "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
                    "data": str(args.data), "events": n, "load_before": load_before, "throughput": {},
                    "duration_s": args.duration, "worker_env": args.worker_env}
    live: Proc | None = None
    try:
        for rep, c in [(r, c) for r in range(args.repeat) for c in contenders]:
            last = rep == args.repeat - 1
            tag = f"{name}-{rep}"
            print(f"[{c}] draining {n:,} events (round {rep + 1}/{args.repeat}) ...", flush=True)
            log = out / f"{c}-{rep}.log"
            if c == "bare":
                start = end_offsets(args.bootstrap, prefix + "bare-out")
                asyncio.run(bare_loop(args.bootstrap, source, prefix + "bare-out", n))
                count, rate = drain_rate(args.bootstrap, prefix + "bare-out", start, n, args.timeout)
            elif c == "faust-min":
                start = end_offsets(args.bootstrap, prefix + "faust-out")
                env = dict(base_env, BENCH_APP_ID=f"e2e-{tag}-faustmin", BENCH_BOOTSTRAP=args.bootstrap,
                           BENCH_DATA_DIR=str(tmp / f"faust-min-{rep}"), BENCH_WEB_PORT=str(free_port()),
                           BENCH_SOURCE=source, BENCH_SINK=prefix + "faust-out")
                proc = Proc([sys.executable, "faust_minimal.py", "worker", "-l", "warn"], env, BENCH / "peers", log)
                try:
                    count, rate = drain_rate(args.bootstrap, prefix + "faust-out", start, n, args.timeout, proc.proc)
                finally:
                    proc.stop()
            elif c == "quix":
                start = end_offsets(args.bootstrap, prefix + "quix-out")
                proc = Proc([str(py_peers), "quix_app.py", args.bootstrap, source, prefix + "quix-out",
                             f"e2e-{tag}-quix", str(tmp / f"quix-{rep}")], base_env, BENCH / "peers", log)
                try:
                    count, rate = drain_rate(args.bootstrap, prefix + "quix-out", start, n, args.timeout, proc.proc)
                finally:
                    proc.stop()
            else:
                scorer = c.split("-", 1)[1]
                wprefix = prefix if c != "before-cooc" else prefix + "before-"
                env = worker_env(base_env, args.bootstrap, wprefix, f"e2e-{tag}-{c}", tmp / f"{c}-{rep}", scorer)
                if c == "worker2-cooc":
                    env["STREAMREC_PROCESSES"] = "2"
                wsettings = Settings.from_env(env)
                topics.apply(wsettings)   # this app id's changelog topic (and the baseline's own topics)
                wsource, wrecs = wsettings.topic("interactions"), wsettings.topic("recommendations")
                if wsource != source and rep == 0:
                    produce(args.bootstrap, wsource, drain_events)
                start = end_offsets(args.bootstrap, wrecs)
                proc = run_worker(env, None, args.baseline if c == "before-cooc" else ROOT)
                live = Proc(None, env, ROOT, log, proc)
                spy = None
                if args.profile and c == "worker-cooc" and last:
                    spy = subprocess.Popen([str(PEERS_VENV / "bin" / "py-spy"), "record", "-p", str(proc.pid),
                                            "-d", str(int(args.profile)), "-r", "100", "-f", "raw",
                                            "-o", str((out / "worker-cooc.pyspy.txt").resolve())],
                                           stdout=(out / "py-spy.log").open("wb"), stderr=subprocess.STDOUT)
                count, rate = drain_rate(args.bootstrap, wrecs, start, n, args.timeout, proc)
                if spy is not None and last:
                    spy.wait()
                if c in LATENCY and args.loads and last:
                    result.setdefault("latency", {})[c] = latency_phase(args, all_events, n, wsource, wrecs)
                live.stop()
                live = None
            runs = result["throughput"].setdefault(c, {"runs": [], "outs": []})
            runs["runs"].append(round(rate))
            runs["outs"].append(count)
            runs["events_per_s"] = sorted(runs["runs"])[len(runs["runs"]) // 2]   # the median (upper, if even)
            runs["out"] = min(runs["outs"])
            print(f"[{c}] {rate:,.0f} events/s ({count:,}/{n:,} out)", flush=True)

    finally:
        if live is not None:
            live.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    result["load_after"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plots(result, out)
    rates = result["throughput"]
    print(f"\n{result['date']}  {result['machine']}  load {load_before} -> {result['load_after']}")
    print(f"{n:,} events of {args.data.name}\n")
    names = [c for c in CONTENDERS if c in rates]
    print("| contender | events/s (median) | rounds | " + " | ".join(f"/ {c}" for c in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for a in names:
        ra = rates[a]["events_per_s"]
        cells = [f"{ra / rates[b]['events_per_s']:.2f}x" if rates[b]["events_per_s"] else "-" for b in names]
        print(f"| {a} | {ra:,} | {' / '.join(f'{x:,}' for x in rates[a]['runs'])} | " + " | ".join(cells) + " |")
    for who, lat in (result.get("latency") or {}).items():
        print(f"\n{who}, open loop:\n")
        print("| offered ev/s | output ev/s | p50 ms | p95 ms | p99 ms | max ms | lag at end | unanswered | load |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in lat:
            print(f"| {r['offered_per_s']:,.0f} | {r['output_per_s_in_window']:,} | {r['p50_ms']} | {r['p95_ms']} | "
                  f"{r['p99_ms']} | {r['max_ms']} | {r['lag_at_end']:,} | {r['unanswered_after_settle']:,} | "
                  f"{r['load_avg']} |")
    print(f"\nresults and plots in {out}")
    incomplete = [c for c in names if rates[c]["out"] < n]
    if incomplete:
        print(f"WARNING: incomplete drains: {incomplete}")
    return 1 if incomplete else 0


if __name__ == "__main__":
    raise SystemExit(main())
