#!/usr/bin/env bash
# Multi-process Allezon on this machine: id-svc, profile-svc, aggregate-svc,
# ingest workers and the gateway as separate release binaries, talking over
# gRPC and a Kafka topic. Stores are Aerospike when AEROSPIKE_HOSTS is set,
# else each service's embedded store under $RUN/data.
#
#   KAFKA=127.0.0.1:9092 ./scripts/cluster.sh start    # starts everything, returns
#   ./scripts/cluster.sh kill-worker 1                  # SIGKILL worker 1
#   ./scripts/cluster.sh start-worker 1                 # (re)start worker 1
#   ./scripts/cluster.sh kill profile-svc               # SIGKILL one process:
#   ./scripts/cluster.sh restart profile-svc            # gateway, profile-svc,
#                                                       # aggregate-svc, id-svc, worker-N
#   ./scripts/cluster.sh stop                           # SIGTERM everything
#
# Environment: KAFKA (bootstrap servers, required), AEROSPIKE_HOSTS
# (optional), AEROSPIKE_NAMESPACE (default test), TOPIC (default user-tags),
# PARTITIONS (default 4), WORKERS (default 2), HTTP_PORT (default 8080),
# RUN (state directory, default ./run/cluster), STATIC_MEMBERS (1: each
# worker joins as `--kafka-instance-id worker-N`; off by default, since
# tansu 0.6 never expires a static member that died, and a group it led
# never rebalances again: README, "static membership"). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN="${RUN:-./run/cluster}"
TOPIC="${TOPIC:-user-tags}"
PARTITIONS="${PARTITIONS:-4}"
WORKERS="${WORKERS:-2}"
HTTP_PORT="${HTTP_PORT:-8080}"
PROFILE_PORT=50061 AGGREGATE_PORT=50062 ID_PORT=50063
BIN=./target/release
mkdir -p "$RUN/logs"

common=(--aerospike-namespace "${AEROSPIKE_NAMESPACE:-test}")
[ -n "${AEROSPIKE_HOSTS:-}" ] && common+=(--aerospike-hosts "$AEROSPIKE_HOSTS")

# Each process runs under a small supervisor, as Kubernetes would run it: a
# process that crashed (SIGSEGV, SIGABRT: librdkafka 2.12.1 can crash a worker
# whose broker restarted empty; see the README) or stopped itself with an
# error (a stuck worker, a client call that hung) is started again a second
# later. One killed with SIGKILL (`kill`, `kill-worker`: the crash tests do
# that and restart it themselves) or stopped by `stop` stays down. The pid
# file always holds the running process's pid.
launch() { # name, binary, args…
  local name=$1 bin=$2; shift 2
  rm -f "$RUN/$name.stopping"
  (
    while :; do
      RUST_LOG="${RUST_LOG:-info}" $NICE "$BIN/$bin" "$@" &
      echo $! >"$RUN/$name.pid"
      rc=0; wait $! || rc=$?
      [ -e "$RUN/$name.stopping" ] && break
      case $rc in
        1 | 101 | 134 | 139) echo "== cluster.sh: $name ended with status $rc; starting it again" ;;
        *) break ;;
      esac
      sleep 1
    done
  ) >>"$RUN/logs/$name.log" 2>&1 &
}
NICE=""

wait_port() {
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $1; see $RUN/logs" >&2; return 1
}

worker() { # index
  # The workers build the profiles too, which may lag 10 s at most: they
  # are not niced by default any more (WORKER_NICE=10 lets them yield the
  # CPU to the request path, as they did when they only counted).
  NICE="nice -n ${WORKER_NICE:-0}" launch "worker-$1" ingest-worker --kafka-brokers "$KAFKA" --kafka-topic "$TOPIC" \
    --kafka-create-partitions "$PARTITIONS" ${STATIC_MEMBERS:+--kafka-instance-id "worker-$1"} \
    --profile-svc "http://127.0.0.1:$PROFILE_PORT" \
    --aggregate-svc "http://127.0.0.1:$AGGREGATE_PORT" --id-svc "http://127.0.0.1:$ID_PORT" \
    --admin-addr "127.0.0.1:$((9100 + $1))"
}

# Each store service keeps its data under $RUN/data, so a restarted one
# finds what it had. Each admin port is fixed, for scraping.
id_svc() {
  launch id-svc id-svc --grpc-addr "127.0.0.1:$ID_PORT" --data-dir "$RUN/data" \
    --admin-addr 127.0.0.1:9098 "${common[@]}"
}
profile_svc() {
  launch profile-svc profile-svc --grpc-addr "127.0.0.1:$PROFILE_PORT" \
    --data-dir "$RUN/data" --admin-addr 127.0.0.1:9096 "${common[@]}"
}
aggregate_svc() {
  launch aggregate-svc aggregate-svc --grpc-addr "127.0.0.1:$AGGREGATE_PORT" \
    --data-dir "$RUN/data" --admin-addr 127.0.0.1:9097 "${common[@]}"
}
gateway() {
  launch gateway gateway --http-addr "127.0.0.1:$HTTP_PORT" --admin-addr 127.0.0.1:9100 \
    --kafka-brokers "$KAFKA" --kafka-topic "$TOPIC" --kafka-create-partitions "$PARTITIONS" \
    --profile-svc "http://127.0.0.1:$PROFILE_PORT" \
    --aggregate-svc "http://127.0.0.1:$AGGREGATE_PORT" --id-svc "http://127.0.0.1:$ID_PORT"
}

case "${1:-}" in
  start)
    : "${KAFKA:?set KAFKA to the bootstrap servers}"
    cargo build --release --locked -p gateway -p profile-svc -p aggregate-svc -p id-svc \
      -p ingest-worker >&2
    id_svc; profile_svc; aggregate_svc
    # The services bind their port once their store is ready; the gateway
    # opens its connections to them before it serves.
    for port in $ID_PORT $PROFILE_PORT $AGGREGATE_PORT; do wait_port "$port"; done
    for i in $(seq 1 "$WORKERS"); do worker "$i"; done
    gateway
    wait_port "$HTTP_PORT"
    echo "allezon cluster: http://127.0.0.1:$HTTP_PORT, logs in $RUN/logs" >&2
    ;;
  kill-worker) kill -9 "$(cat "$RUN/worker-$2.pid")" ;;
  start-worker) : "${KAFKA:?set KAFKA}"; worker "$2" ;;
  kill) kill -9 "$(cat "$RUN/$2.pid")" ;;
  restart)
    : "${KAFKA:?set KAFKA}"
    case "$2" in
      gateway) gateway; wait_port "$HTTP_PORT" ;;
      profile-svc) profile_svc ;;
      aggregate-svc) aggregate_svc ;;
      id-svc) id_svc ;;
      worker-*) worker "${2#worker-}" ;;
      *) echo "unknown process $2" >&2; exit 2 ;;
    esac
    ;;
  stop)
    for pid in "$RUN"/*.pid; do
      touch "${pid%.pid}.stopping"
      kill "$(cat "$pid")" 2>/dev/null || true; rm -f "$pid"
    done
    ;;
  *) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
