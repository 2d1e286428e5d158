#!/usr/bin/env bash
# The whole test suite from nothing: install (reusing the machine's venv), start a throwaway local Apache
# Kafka broker, run unit + integration tests against it, stop the broker.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k dead_letter  # extra arguments go to pytest
#
# With STREAMREC_KAFKA_BOOTSTRAP already set (e.g. the compose `tests` service), that broker is used and none
# is started here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)

bash scripts/bootstrap.sh
VENV="${STREAMREC_VENV:-$ROOT/.venv}"   # this checkout's own environment (scripts/bootstrap.sh)
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ -z "${STREAMREC_KAFKA_BOOTSTRAP:-}" ]; then
    # A dedicated port and run dir, wiped first, so tests never see a demo broker's topics.
    export STREAMREC_KAFKA_PORT="${STREAMREC_TEST_KAFKA_PORT:-19092}"
    export STREAMREC_KAFKA_RUN_DIR="$ROOT/var/test-kafka"
    export STREAMREC_PYTHON="$VENV/bin/python"
    bash deploy/kafka/kafka.sh fetch
    bash deploy/kafka/kafka.sh reset >/dev/null
    bash deploy/kafka/kafka.sh start
    trap 'bash deploy/kafka/kafka.sh stop || true' EXIT
    bash deploy/kafka/kafka.sh wait 90
    export STREAMREC_KAFKA_BOOTSTRAP="127.0.0.1:$STREAMREC_KAFKA_PORT"
fi
echo "[test] broker: $STREAMREC_KAFKA_BOOTSTRAP"

set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider -ra "$@"
rc=$?
set -e
echo "[test] pytest exit code $rc, total $(( $(date +%s) - START )) s"
exit $rc
