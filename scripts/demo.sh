#!/usr/bin/env bash
# The main job, from nothing: install, start a local Apache Kafka broker, apply topics, start a worker, replay a
# data set into `interactions`, show recommendations arriving, print the worker's counters, stop everything.
#
#   bash scripts/demo.sh
#
# Data: MovieLens ml-latest-small from ../shared/data when present (real titles), else a generated data set.
# Environment (all optional): STREAMREC_DEMO_DATA (a ratings/sequence file), STREAMREC_DEMO_TITLES,
# STREAMREC_DEMO_EVENTS (how many events to replay, default 20000), STREAMREC_DEMO_RATE (events/s, 0 = max),
# STREAMREC_MODEL_DIR (a `streamrec train` output: the worker then scores with the language model),
# and any STREAMREC_* worker setting.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
VENV="${STREAMREC_VENV:-$ROOT/.venv}"   # this checkout's own environment (scripts/bootstrap.sh)
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

RUN="$ROOT/var/demo"
mkdir -p "$RUN"
export STREAMREC_KAFKA_PORT="${STREAMREC_KAFKA_PORT:-9092}"
export STREAMREC_KAFKA_RUN_DIR="$RUN/kafka" STREAMREC_PYTHON="$VENV/bin/python"
export STREAMREC_KAFKA_BOOTSTRAP="127.0.0.1:$STREAMREC_KAFKA_PORT"
export STREAMREC_DATA_DIR="$RUN/worker-state" STREAMREC_WEB_PORT="${STREAMREC_WEB_PORT:-6066}"
EVENTS="${STREAMREC_DEMO_EVENTS:-20000}"
RATE="${STREAMREC_DEMO_RATE:-0}"

WORKER_PID=""
cleanup() {
    echo "[demo] stopping"
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID"            # graceful: Faust commits offsets and closes RocksDB
        for _ in $(seq 60); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
    fi
    bash deploy/kafka/kafka.sh stop || true
}
trap cleanup EXIT

echo "[demo] 1/5 broker"
bash deploy/kafka/kafka.sh fetch
bash deploy/kafka/kafka.sh reset >/dev/null      # a fresh broker each run, so the demo starts from zero
rm -rf "$STREAMREC_DATA_DIR"                      # local state must not outlive the broker it came from
bash deploy/kafka/kafka.sh start
bash deploy/kafka/kafka.sh wait 90

echo "[demo] 2/5 topics"
streamrec topics apply

echo "[demo] 3/5 data"
ML="$ROOT/../shared/data/ml-latest-small"
if [ -n "${STREAMREC_DEMO_DATA:-}" ]; then
    DATA="$STREAMREC_DEMO_DATA"; TITLES="${STREAMREC_DEMO_TITLES:-}"
elif [ -f "$ML/ratings.csv" ]; then
    DATA="$ML/ratings.csv"; TITLES="$ML/movies.csv"
else
    DATA="$RUN/synthetic.txt"; TITLES="$RUN/synthetic_titles.tsv"
    streamrec generate "$DATA" --users 1000 --items 200 --length 20 --titles "$TITLES"
fi
echo "[demo] data: $DATA (first $EVENTS events by time)"
[ -n "$TITLES" ] && streamrec catalog "$TITLES" --quiet

echo "[demo] 4/5 worker (log: $RUN/worker.log)"
streamrec worker > "$RUN/worker.log" 2>&1 &
WORKER_PID=$!
python - <<PY
import json, sys, time, urllib.request, urllib.error
url = "http://127.0.0.1:$STREAMREC_WEB_PORT/ready"
for _ in range(240):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            print("[demo] worker ready:", r.read().decode()); sys.exit(0)
    except (OSError, urllib.error.HTTPError):
        time.sleep(0.5)
sys.exit("[demo] worker did not become ready; see $RUN/worker.log")
PY

echo "[demo] 5/5 replay and watch recommendations arrive"
streamrec tail --titles "${TITLES:-/dev/null}" --max-messages 3 --timeout 60 &
TAIL_PID=$!
sleep 2    # let the tail subscribe before the first events land
START=$(date +%s.%N)
streamrec replay "$DATA" --limit "$EVENTS" --rate "$RATE"
wait $TAIL_PID || true

# Wait until every replayed event has a recommendation, then show the counters.
python - <<PY
import re, time, urllib.request
def metrics():
    text = urllib.request.urlopen("http://127.0.0.1:$STREAMREC_WEB_PORT/metrics", timeout=5).read().decode()
    get = lambda name: sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))
    return {k: get(n) for k, n in [("applied", 'streamrec_events_total{outcome="applied"}'),
            ("recommendations", "streamrec_recommendations_total"),
            ("dead letters", 'streamrec_events_total{outcome="dead_letter"}'),
            ("duplicates", 'streamrec_events_total{outcome="duplicate"}')]}
deadline = time.time() + 300
while time.time() < deadline:
    m = metrics()
    if m["recommendations"] + m["dead letters"] >= $EVENTS:
        break
    time.sleep(1)
took = time.time() - $START
print("[demo] worker counters:", ", ".join(f"{k}={int(v)}" for k, v in m.items()))
print(f"[demo] {int(m['recommendations'])} recommendations in {took:.1f} s since replay started "
      f"({m['recommendations'] / took:.0f}/s end to end)")
PY
echo "[demo] what the worker recommends now, looked up over HTTP (GET /recommendations/{user_id}):"
python - <<PY
import json, urllib.request
from streamrec.model.datasets import read_events, read_titles
from streamrec.tools.tail import format_recommendation
titles = read_titles("$TITLES") if "$TITLES" else {}
users = []
for e in read_events("$DATA")[:$EVENTS]:   # two of the most active users of the replayed slice
    users.append(e.user_id)
for user in sorted(set(users), key=users.count, reverse=True)[:2]:
    msg = json.loads(urllib.request.urlopen(f"http://127.0.0.1:$STREAMREC_WEB_PORT/recommendations/{user}").read())
    print(format_recommendation(msg, titles))
PY
echo "[demo] done"
