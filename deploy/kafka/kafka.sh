#!/usr/bin/env bash
# Run the official Apache Kafka broker locally, without Docker: jars fetched from Maven Central
# by deploy/kafka/pom.xml, one KRaft node (broker + controller) bound to 127.0.0.1 only.
#
#   deploy/kafka/kafka.sh fetch            # download the broker jars (skipped when already complete)
#   deploy/kafka/kafka.sh start            # format storage on first start, launch in the background
#   deploy/kafka/kafka.sh wait [SECONDS]   # block until the broker answers a Metadata request
#   deploy/kafka/kafka.sh status           # running? answering? (exit 0 running, 3 stopped)
#   deploy/kafka/kafka.sh logs [-f|N]      # tail the broker log
#   deploy/kafka/kafka.sh stop             # graceful stop (SIGTERM, then SIGKILL after a timeout)
#   deploy/kafka/kafka.sh reset            # stop and wipe all data and logs in the run dir
#
# Environment:
#   STREAMREC_KAFKA_VERSION   Kafka release to run (default 4.4.0, DEFAULT_VERSION below)
#   STREAMREC_KAFKA_PORT      PLAINTEXT port (default 9092); the controller uses PORT+1
#   STREAMREC_KAFKA_RUN_DIR   config, pid file, data and logs (default deploy/kafka/.run)
#   STREAMREC_KAFKA_HEAP_OPTS JVM heap flags (default "-Xms256m -Xmx512m")
#   STREAMREC_KAFKA_JAVA      java binary (default: $JAVA_HOME/bin/java or java on PATH)
#   STREAMREC_KAFKA_WAIT_S    default timeout of `wait` (default 60)
#   STREAMREC_PYTHON          python3 used by `wait`/`status` for the Metadata probe (default python3)
#   STREAMREC_KAFKA_SECURITY  plaintext (default) or sasl_ssl: a TLS + SCRAM-SHA-512 listener with ACLs
#                             enforced (see "Secured broker" in README.md); needs openssl
#   STREAMREC_KAFKA_USERS     sasl_ssl only: SCRAM users created at the first start besides `admin`
#                             (default "streamrec"); passwords are generated into RUN_DIR/secrets/
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEFAULT_VERSION="4.4.0"

VERSION="${STREAMREC_KAFKA_VERSION:-$DEFAULT_VERSION}"
PORT="${STREAMREC_KAFKA_PORT:-9092}"
RUN_DIR="${STREAMREC_KAFKA_RUN_DIR:-$HERE/.run}"
HEAP_OPTS="${STREAMREC_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
WAIT_S_DEFAULT="${STREAMREC_KAFKA_WAIT_S:-60}"
PYTHON="${STREAMREC_PYTHON:-python3}"
SECURITY="${STREAMREC_KAFKA_SECURITY:-plaintext}"
USERS="${STREAMREC_KAFKA_USERS:-streamrec}"

if [[ -n "${STREAMREC_KAFKA_JAVA:-}" ]]; then
  JAVA="$STREAMREC_KAFKA_JAVA"
elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
else
  JAVA="java"
fi

[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "kafka.sh: STREAMREC_KAFKA_PORT must be a number, got '$PORT'" >&2; exit 2; }
CONTROLLER_PORT=$((PORT + 1))
case "$SECURITY" in
  plaintext) PROBE_PORT=$PORT ;;
  # The readiness probe speaks plain Kafka: it uses the secured broker's credential-less listener (PORT+2),
  # where Metadata answers (brokers, no topics) but the ACLs allow the anonymous principal nothing else.
  sasl_ssl) PROBE_PORT=$((PORT + 2)) ;;
  *) echo "kafka.sh: STREAMREC_KAFKA_SECURITY must be plaintext or sasl_ssl, got '$SECURITY'" >&2; exit 2 ;;
esac
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"   # absolute, so the JVM and pid checks never depend on cwd

LIBS="$HERE/.cache/libs-$VERSION"
STAMP="$LIBS/.fetch-complete"
PID_FILE="$RUN_DIR/kafka.pid"
DATA_DIR="$RUN_DIR/data"
LOG_DIR="$RUN_DIR/logs"
CONF="$RUN_DIR/server.properties"
LOG4J_BROKER="$RUN_DIR/log4j2-broker.properties"
LOG4J_TOOLS="$RUN_DIR/log4j2-tools.properties"
VERSION_FILE="$RUN_DIR/version"
TLS_DIR="$RUN_DIR/tls"
SECRETS_DIR="$RUN_DIR/secrets"
MARKER="$RUN_DIR/.streamrec-kafka-run"

log() { echo "kafka.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------- fetch

pom_digest() { sha256sum "$HERE/pom.xml" | cut -c1-16; }

libs_complete() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$VERSION $(pom_digest)" ]] \
    && compgen -G "$LIBS/kafka_2.13-$VERSION.jar" >/dev/null
}

cmd_fetch() {
  if libs_complete; then
    log "Kafka $VERSION jars already fetched ($LIBS)"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found on PATH (Maven is needed once, to fetch the broker jars)"
  local tmp="$LIBS.tmp.$$"
  rm -rf "$tmp"
  local mvn_args=(-q -B -Dstyle.color=never -f "$HERE/pom.xml" "-Dkafka.version=$VERSION"
                  dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp")
  log "fetching Kafka $VERSION jars with Maven into $LIBS"
  # Offline first: if ~/.m2 already holds everything this needs no network at all.
  local mvn_log="$HERE/.cache/fetch-$VERSION.log"
  mkdir -p "$HERE/.cache"
  if ! mvn -o "${mvn_args[@]}" > "$mvn_log" 2>&1; then
    rm -rf "$tmp"
    if ! mvn "${mvn_args[@]}" > "$mvn_log" 2>&1; then
      rm -rf "$tmp"
      tail -n 30 "$mvn_log" >&2
      die "Maven could not fetch org.apache.kafka:kafka_2.13:$VERSION (full output: $mvn_log)"
    fi
  fi
  [[ -f "$tmp/kafka_2.13-$VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$VERSION.jar missing after fetch"; }
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  echo "$VERSION $(pom_digest)" > "$STAMP"
  log "fetched $(ls "$LIBS"/*.jar | wc -l) jars ($(du -sh "$LIBS" | cut -f1))"
}

# -------------------------------------------------------------------------------- process state

# Prints the pid when our broker (for this run dir) is alive; non-zero otherwise.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the process must be a kafka.Kafka started with this run dir's config.
  local cmdline
  cmdline="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"kafka.Kafka"* && "$cmdline" == *"$CONF"* ]] || return 1
  echo "$pid"
}

port_open() {  # port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sends a Metadata v4 request (a version every Kafka from 1.0 to 4.x accepts) and prints
# "brokers=N controller=ID cluster=ID"; exit 0 only if at least one broker is registered.
metadata_probe() {
  command -v "$PYTHON" >/dev/null 2>&1 || { port_open "$PROBE_PORT" && echo "port open (no python for a Metadata probe)"; return; }
  "$PYTHON" - "$PROBE_PORT" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.settimeout(5)
    client = b"streamrec-kafka-sh"
    # header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id; body: topics=null, allow_auto_create=false
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">i?", -1, False)
    s.sendall(struct.pack(">i", len(body)) + body)
    def recv(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf
    size, = struct.unpack(">i", recv(4))
    data = recv(size)
    s.close()
    off = 0
    def take(fmt):
        global off
        v = struct.unpack_from(fmt, data, off); off += struct.calcsize(fmt); return v[0]
    def string():
        global off
        n = take(">h")
        if n < 0:
            return None
        v = data[off:off + n].decode(); off += n; return v
    corr = take(">i"); take(">i")  # correlation id, throttle_time_ms
    brokers = []
    for _ in range(take(">i")):
        node = take(">i"); host = string(); bport = take(">i"); string()
        brokers.append(f"{node}@{host}:{bport}")
    cluster = string(); controller = take(">i")
    print(f"brokers={','.join(brokers) or 'none'} controller={controller} cluster={cluster}")
    sys.exit(0 if corr == 7 and brokers else 1)
except Exception as e:  # not up yet, or not answering
    print(f"no metadata answer: {type(e).__name__}: {e}")
    sys.exit(1)
PY
}

# ----------------------------------------------------------------------------------- config

listener_config() {
  if [[ "$SECURITY" == plaintext ]]; then
    cat <<EOF
inter.broker.listener.name=PLAINTEXT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
    return
  fi
  local admin
  admin="$(cat "$SECRETS_DIR/admin.password")"
  cat <<EOF
# Secured (STREAMREC_KAFKA_SECURITY=sasl_ssl). Clients: SASL_SSL with SCRAM-SHA-512 on PORT, certificate signed
# by $TLS_DIR/ca.crt. PLAINTEXT on PORT+2 authenticates nobody (principal User:ANONYMOUS, no ACLs: it may
# read only cluster metadata; kafka.sh's readiness probe uses it). The controller listener uses SASL/PLAIN,
# because KRaft controllers cannot check SCRAM (the credentials live in the metadata they serve).
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,PLAINTEXT://127.0.0.1:$PROBE_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT,PLAINTEXT://127.0.0.1:$PROBE_PORT
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin" user_admin="$admin";
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
# ACLs: nothing is allowed unless an ACL allows it; admin (the broker itself, topics/ACL administration) is
# the only super user. Grant a worker's principal with: streamrec acls apply (docs/deployment.md).
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
EOF
}

# sasl_ssl only, once per run dir: a throwaway CA and a broker certificate for 127.0.0.1 (PEM, which Kafka reads
# directly), and a random password per SCRAM user. All of it stays in the run dir, mode 600; none is committed.
make_secrets() {
  [[ "$SECURITY" == sasl_ssl ]] || return 0
  command -v openssl >/dev/null || die "openssl not found (needed to make the TLS certificates)"
  mkdir -p "$TLS_DIR" "$SECRETS_DIR"
  chmod 700 "$TLS_DIR" "$SECRETS_DIR"
  local u
  for u in admin $USERS; do
    [[ "$u" =~ ^[A-Za-z0-9._-]+$ ]] || die "STREAMREC_KAFKA_USERS: bad user name '$u'"
    [[ -s "$SECRETS_DIR/$u.password" ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$SECRETS_DIR/$u.password")
  done
  if [[ ! -s "$TLS_DIR/broker.pem" ]]; then
    log "making a test CA and a broker certificate in $TLS_DIR"
    ( umask 077; cd "$TLS_DIR"
      openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
        -subj "/CN=streamrec-kafka-sh test CA" 2>/dev/null
      openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=127.0.0.1" 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext
      openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out broker.crt -days 30 \
        -extfile san.ext 2>/dev/null
      cat broker.key broker.crt > broker.pem
      rm -f broker.csr san.ext ca.srl
      chmod 644 ca.crt ) || die "openssl could not make the certificates"
  fi
}

# `kafka-storage format --add-scram` arguments: the SCRAM users exist before the broker first starts (KRaft).
scram_args() {
  [[ "$SECURITY" == sasl_ssl ]] || return 0
  local u
  for u in admin $USERS; do
    printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$u,password=$(cat "$SECRETS_DIR/$u.password")]"
  done
}

write_config() {
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  touch "$MARKER"
  make_secrets
  ( umask 077; : > "$CONF" )   # it holds the admin password in sasl_ssl mode
  cat > "$CONF" <<EOF
# Generated by deploy/kafka/kafka.sh on every start; edit kafka.sh, not this file.
# Single-node KRaft: this process is both the broker and the (only) controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
# Bound to loopback only: never reachable from other hosts.
$(listener_config)
log.dirs=$DATA_DIR

# One node: every internal topic must have replication factor 1 / min ISR 1.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Fewer internal partitions than the defaults (50): faster first group/transaction coordinator
# load on a 2-core box; plenty for one node.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4

# The project creates its topics explicitly (partition counts matter to Faust tables).
auto.create.topics.enable=false
num.partitions=1
# Tests and workers join groups often: do not delay the first rebalance.
group.initial.rebalance.delay.ms=0

# Small thread pools for 2 cores.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1

# Development retention: a week or 1 GiB per partition, whichever first.
log.retention.hours=168
log.retention.bytes=1073741824
log.segment.bytes=268435456
EOF
  cat > "$LOG4J_BROKER" <<EOF
# Generated by deploy/kafka/kafka.sh. Broker log: $LOG_DIR/server.log (rolled at 50 MB, 3 kept).
status = warn
name = streamrec-kafka-broker
# Kafka stops itself on SIGTERM; log4j's own JVM hook would only warn during that shutdown.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $LOG_DIR/server.log
appender.file.filePattern = $LOG_DIR/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
EOF
  cat > "$LOG4J_TOOLS" <<'EOF'
status = warn
name = streamrec-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  # A random cluster id (base64url of 16 random bytes, as `kafka-storage random-uuid` makes). Like
  # Kafka's Uuid.randomUuid, redraw one that starts with '-': StorageTool's parser reads it as an option
  # (1 draw in 64; it failed CI once).
  local cluster_id="-"
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
  done
  log "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
  local scram=()
  mapfile -t scram < <(scram_args)
  "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIBS/*" \
    kafka.tools.StorageTool format --config "$CONF" --cluster-id "$cluster_id" --ignore-formatted "${scram[@]}" \
    > "$LOG_DIR/format.out" 2>&1 || { cat "$LOG_DIR/format.out" >&2; die "storage format failed"; }
}

# --------------------------------------------------------------------------------- commands

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid, 127.0.0.1:$PORT)"
    return 0
  fi
  rm -f "$PID_FILE"
  if port_open "$PORT" || port_open "$CONTROLLER_PORT" || port_open "$PROBE_PORT"; then
    die "127.0.0.1:$PORT, :$CONTROLLER_PORT or :$PROBE_PORT is already in use by another process (not this run dir's broker); set STREAMREC_KAFKA_PORT"
  fi
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (need Java 17+); set JAVA_HOME or STREAMREC_KAFKA_JAVA"
  cmd_fetch
  if [[ -f "$VERSION_FILE" && -f "$DATA_DIR/meta.properties" && "$(cat "$VERSION_FILE")" != "$VERSION" ]]; then
    log "WARNING: data in $DATA_DIR was created by Kafka $(cat "$VERSION_FILE"), starting $VERSION on it (run 'kafka.sh reset' if it fails)"
  fi
  write_config
  format_storage
  echo "$VERSION" > "$VERSION_FILE"
  : > "$LOG_DIR/kafka.out"
  # setsid: the broker gets its own session, so the caller's Ctrl-C or exiting shell does not kill it.
  # shellcheck disable=SC2086
  setsid nohup "$JAVA" $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dkafka.logs.dir="$LOG_DIR" \
    -Dlog4j2.configurationFile="$LOG4J_BROKER" \
    -cp "$LIBS/*" kafka.Kafka "$CONF" \
    >> "$LOG_DIR/kafka.out" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$PID_FILE"
  sleep 0.5
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$PID_FILE"
    show_log_tail
    die "broker exited right after start"
  fi
  log "started Kafka $VERSION (pid $pid) on 127.0.0.1:$PORT, controller :$CONTROLLER_PORT; run dir $RUN_DIR"
  if [[ "$SECURITY" == sasl_ssl ]]; then
    log "SASL_SSL + SCRAM-SHA-512 on :$PORT (CA $TLS_DIR/ca.crt; users admin $USERS, passwords in $SECRETS_DIR/), ACLs enforced; credential-less PLAINTEXT on :$PROBE_PORT"
  fi
  log "next: $0 wait"
}

show_log_tail() {
  local f
  for f in "$LOG_DIR/kafka.out" "$LOG_DIR/server.log"; do
    if [[ -s "$f" ]]; then
      echo "----- last 30 lines of $f (cut at 300 chars) -----" >&2
      tail -n 30 "$f" | cut -c1-300 >&2
    fi
  done
}

cmd_wait() {
  local timeout="${1:-$WAIT_S_DEFAULT}" start now out
  [[ "$timeout" =~ ^[0-9]+$ ]] || die "wait: timeout must be whole seconds, got '$timeout'"
  start=$(date +%s)
  while true; do
    if out="$(metadata_probe)"; then
      log "broker ready on 127.0.0.1:$PORT after $(( $(date +%s) - start ))s: $out"
      return 0
    fi
    if ! running_pid >/dev/null; then
      # This run dir's broker is not running (crashed, stopped, or never started).
      show_log_tail
      die "broker for $RUN_DIR is not running (last probe: $out)"
    fi
    now=$(date +%s)
    if (( now - start >= timeout )); then
      show_log_tail
      die "broker on 127.0.0.1:$PORT not ready after ${timeout}s (last probe: $out)"
    fi
    sleep 0.5
  done
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for (( i = 0; i < 120; i++ )); do   # up to 60 s for a controlled shutdown
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "broker did not stop within 60s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid out
  if pid="$(running_pid)"; then
    if out="$(metadata_probe)"; then
      echo "running: Kafka $(cat "$VERSION_FILE" 2>/dev/null || echo "$VERSION") pid $pid on 127.0.0.1:$PORT, ready ($out); run dir $RUN_DIR"
    else
      echo "running: Kafka $(cat "$VERSION_FILE" 2>/dev/null || echo "$VERSION") pid $pid on 127.0.0.1:$PORT, NOT ready yet ($out); run dir $RUN_DIR"
    fi
    return 0
  fi
  if port_open "$PORT"; then
    echo "stopped (no broker from $RUN_DIR), but something else listens on 127.0.0.1:$PORT"
  else
    echo "stopped (run dir $RUN_DIR)"
  fi
  return 3
}

cmd_reset() {
  cmd_stop
  if [[ -d "$RUN_DIR" ]] && [[ -n "$(ls -A "$RUN_DIR")" ]] && [[ ! -f "$MARKER" ]]; then
    die "refusing to wipe $RUN_DIR: it has no $MARKER (not a kafka.sh run dir)"
  fi
  rm -rf "${RUN_DIR:?}/data" "${RUN_DIR:?}/logs" "$CONF" "$LOG4J_BROKER" "$LOG4J_TOOLS" "$VERSION_FILE" "$PID_FILE" \
    "$TLS_DIR" "$SECRETS_DIR"
  log "wiped data and logs in $RUN_DIR"
}

cmd_logs() {
  local f="$LOG_DIR/server.log"
  [[ -f "$f" ]] || { log "no log yet at $f"; return 0; }
  case "${1:-}" in
    -f|--follow) exec tail -n 50 -F "$f" ;;
    "") tail -n 100 "$f"; [[ -s "$LOG_DIR/kafka.out" ]] && { echo "----- $LOG_DIR/kafka.out -----"; tail -n 20 "$LOG_DIR/kafka.out"; } || true ;;
    *) [[ "$1" =~ ^[0-9]+$ ]] || die "logs: expected -f or a line count"; tail -n "$1" "$f" ;;
  esac
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  fetch)  cmd_fetch ;;
  start)  cmd_start ;;
  stop)   cmd_stop ;;
  wait)   shift; cmd_wait "${1:-}" ;;
  status) cmd_status ;;
  reset)  cmd_reset ;;
  logs)   shift; cmd_logs "${1:-}" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
