#!/usr/bin/env python
"""Soak: a sustained replay against a real ``streamrec worker`` for a chosen time, sampling memory, backlog and
end-to-end latency, plotted over time (PNG) and written as JSON. Not a test: run it by hand before a release.

    deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait
    python bench/soak.py --bootstrap 127.0.0.1:9092 --minutes 30 --rate 500 --out docs/img/soak.png

* Events (synthetic users walking item clusters) are produced at ``--rate`` per second, each stamped with the wall
  time it was produced at (its ``timestamp``).
* **memory**: the worker's ``process_resident_memory_bytes`` from its ``/metrics``.
* **backlog**: events produced minus recommendations the worker has published (its ``/metrics``): events waiting.
* **latency**: for every recommendation read back, ``generated_at - event_timestamp`` (produce -> recommendation
  built; one machine, one clock); p50/p99 per sampling window.

Fresh topics (a random prefix) and a fresh data dir each run, so runs never see each other's data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamrec.config import Settings                      # noqa: E402
from streamrec.events import Interaction                   # noqa: E402
from streamrec.stream import topics                        # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, float]:
    out = {}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Producer(threading.Thread):
    """Paced synthetic events: each user walks a small cluster of items, so co-occurrence has work to do."""

    def __init__(self, bootstrap: str, topic: str, rate: float, users: int, seed: int) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer
        self.prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
        self.topic, self.rate, self.users = topic, rate, users
        self.rng = random.Random(seed)
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stop.is_set():
            delay = start + self.sent / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(min(delay, 0.05))
                continue
            u = self.rng.randrange(self.users)
            item = f"c{u % 50}-{self.rng.randrange(40)}" if self.rng.random() < 0.8 else f"x{self.rng.randrange(2000)}"
            e = Interaction(f"s{self.sent}", f"u{u}", item, "view", time.time())
            self.prod.send(self.topic, key=e.user_id.encode(), value=e.to_bytes())
            self.sent += 1
        self.prod.flush()
        self.prod.close()


class LatencyReader(threading.Thread):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer
        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                      enable_auto_commit=False, group_id=None, consumer_timeout_ms=500)
        self.window: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for r in self.consumer:
                m = json.loads(r.value)
                with self.lock:
                    self.window.append(m["generated_at"] - m["event_timestamp"])
        self.consumer.close()

    def take(self) -> list[float]:
        with self.lock:
            out, self.window = self.window, []
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("STREAMREC_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=500.0, help="events per second")
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--web-port", type=int, default=0, help="worker HTTP port (0 = any free one)")
    ap.add_argument("--out", default="docs/img/soak.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    name = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-soak-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_KAFKA_BOOTSTRAP": args.bootstrap, "STREAMREC_TOPIC_PREFIX": f"soak-{name}-",
                "STREAMREC_APP_ID": f"soak-{name}", "STREAMREC_DATA_DIR": str(tmp / "state"),
                "STREAMREC_WEB_PORT": str(args.web_port or free_port()), "STREAMREC_LOG_LEVEL": "warn"})
    settings = Settings.from_env(env)
    topics.apply(settings, create=True)
    url = f"http://127.0.0.1:{env['STREAMREC_WEB_PORT']}"
    log = open(tmp / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "streamrec", "worker"], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    samples: list[dict] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not get ready; log: {tmp / 'worker.log'}")
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        reader = LatencyReader(args.bootstrap, settings.topic("recommendations"))
        producer = Producer(args.bootstrap, settings.topic("interactions"), args.rate, args.users, args.seed)
        reader.start()
        producer.start()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(args.sample_s)
            if worker.poll() is not None:
                raise SystemExit(f"worker exited with {worker.returncode}; log: {tmp / 'worker.log'}")
            m = scrape(url)
            lat = reader.take()
            s = {"t_s": round(time.monotonic() - t0, 1), "rss_mb": m["process_resident_memory_bytes"] / 2**20,
                 "cpu_s": m["process_cpu_seconds_total"], "produced": producer.sent,
                 "answered": m.get("streamrec_recommendations_total", 0.0),
                 "latency_p50_ms": 1000 * percentile(lat, 0.5), "latency_p99_ms": 1000 * percentile(lat, 0.99),
                 "load1": os.getloadavg()[0]}
            s["backlog"] = s["produced"] - s["answered"]
            samples.append(s)
            print(json.dumps(s), flush=True)
        producer.stop.set()
        producer.join(30)
        reader.stop.set()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()

    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "minutes": args.minutes, "rate": args.rate, "users": args.users,
              "samples": samples}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(samples, out, f"soak: {args.rate:.0f} events/s for {args.minutes:g} min, {args.users} users")
    first, last = samples[0], samples[-1]
    print(f"RSS {first['rss_mb']:.0f} -> {last['rss_mb']:.0f} MB (max {max(s['rss_mb'] for s in samples):.0f}); "
          f"backlog max {max(s['backlog'] for s in samples):.0f}; latency p99 max "
          f"{max(s['latency_p99_ms'] for s in samples):.0f} ms; wrote {out} and {out.with_suffix('.json')}")
    return 0


def plot(samples: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["t_s"] / 60 for s in samples]
    fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax[0].plot(t, [s["rss_mb"] for s in samples])
    ax[0].set_ylabel("worker RSS (MB)")
    ax[1].plot(t, [s["backlog"] for s in samples])
    ax[1].set_ylabel("backlog (events)")
    ax[2].plot(t, [s["latency_p50_ms"] for s in samples], label="p50")
    ax[2].plot(t, [s["latency_p99_ms"] for s in samples], label="p99")
    ax[2].set_ylabel("produce -> recommendation (ms)")
    ax[2].set_yscale("log")
    ax[2].legend()
    ax[2].set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
