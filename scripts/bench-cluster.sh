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
export PATH="$HOME/.cargo/bin:$PATH"
DURATION="${DURATION:-20s}"
CONNECTIONS="${CONNECTIONS:-64}"
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
export RUN
RUN=$(mktemp -d)
KAFKA_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export KAFKA="127.0.0.1:$KAFKA_PORT"
export ALLEZON_AEROSPIKE_SET_PREFIX="bench$(date +%s)_"
BASE="http://127.0.0.1:${HTTP_PORT:-8080}"

tansu broker --storage-engine memory://tansu/ --listener-url "tcp://$KAFKA" \
  --advertised-listener-url "tcp://$KAFKA" >"$RUN/tansu.log" 2>&1 &
TANSU=$!
cleanup() { ./scripts/cluster.sh stop || true; kill "$TANSU" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done
RUST_LOG=warn ./scripts/cluster.sh start

count_all() {
  local total=0
  for action in VIEW BUY; do
    local n
    n=$(curl -s -X POST "$BASE/aggregates?time_range=2022-03-01T00:00:00_2022-03-02T00:00:00&action=$action&aggregates=COUNT" \
      | python3 -c 'import json,sys; print(sum(int(r[2]) for r in json.load(sys.stdin)["rows"]))')
    total=$((total + n))
  done
  echo "$total"
}

echo "== POST /user_tags through the gateway, $CONNECTIONS connections, $DURATION"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s scripts/load/user_tags.lua "$BASE" \
  | tee "$RUN/wrk.txt" | grep -E "Latency|50%|90%|99%|requests in|Requests/sec|Non-2xx"
sent=$(awk '/requests in/ {print $1}' "$RUN/wrk.txt")
start=$(date +%s)
for _ in $(seq 1 120); do
  counted=$(count_all)
  echo "counted $counted of $sent (wrk's count; requests it abandoned in flight may add a few)"
  [ "$counted" -ge "$sent" ] && break
  sleep 1
done
echo "the workers caught up $(( $(date +%s) - start )) s after the load stopped"
