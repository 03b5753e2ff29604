#!/usr/bin/env bash
# Multi-process throughput for README.md: the five processes
# (scripts/cluster.sh) on a fresh tansu broker, with Aerospike when
# AEROSPIKE_HOSTS is set, loaded with wrk on POST /user_tags; then how long
# the workers take to count every accepted tag. Loopback only; bounded.
#
#   AEROSPIKE_HOSTS=127.0.0.1:3000 ./scripts/bench-cluster.sh
#   DURATION=60s CONNECTIONS=64 ./scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"
DURATION="${DURATION:-20s}"
CONNECTIONS="${CONNECTIONS:-64}"
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
export RUN
RUN=$(mktemp -d)
KAFKA_PORT=$(free_port)
export KAFKA="127.0.0.1:$KAFKA_PORT"
export ALLEZON_AEROSPIKE_SET_PREFIX="bench$(date +%s)_"
BASE="http://127.0.0.1:${HTTP_PORT:-8080}"

cleanup() { ./scripts/cluster.sh stop || true; kill "${TANSU_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT
start_tansu "$KAFKA_PORT" "$RUN/tansu.log"
RUST_LOG=warn ./scripts/cluster.sh start


echo "== POST /user_tags through the gateway, $CONNECTIONS connections, $DURATION"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s scripts/load/user_tags.lua "$BASE" \
  | tee "$RUN/wrk.txt" | grep -E "Latency|50%|90%|99%|requests in|Requests/sec|Non-2xx"
sent=$(awk '/requests in/ {print $1}' "$RUN/wrk.txt")
start=$(date +%s)
for _ in $(seq 1 120); do
  counted=$(count_all "$BASE")
  echo "counted $counted of $sent (wrk's count; requests it abandoned in flight may add a few)"
  [ "$counted" -ge "$sent" ] && break
  sleep 1
done
echo "the workers caught up $(( $(date +%s) - start )) s after the load stopped"
